"""Each task reads hand-written fixtures in its benchmark's official format; golden metrics by hand."""

import json
from pathlib import Path

import pytest

from eval.predictions import read_predictions
from eval.scoring.evaluate import score_predictions
from eval.tasks import TASKS, TaskDataError, get_task

FIX = Path(__file__).parent / "fixtures" / "eval"


def _score(name, options, folder=None):
    task = get_task(name)
    questions = task.read(options)
    predictions = read_predictions(FIX / (folder or name) / "predictions.jsonl")
    return questions, score_predictions(task, options, questions, predictions)


def _options(name, **kwargs):
    return get_task(name).options_type(**kwargs)


def test_registry_is_exact_and_lists_valid_names():
    assert {"vqav2", "okvqa", "vizwiz", "textvqa", "gqa", "pope", "mme", "scienceqa_img", "mmbench", "seed",
            "synth_vqa", "synth_detail", "synth_pope", "synth_mc", "ifeval_mm", "llava_bench", "mmvet"} == set(TASKS)
    with pytest.raises(KeyError, match="valid tasks: .*gqa.*vqav2"):
        get_task("VQAv2")


def test_vqav2():
    opts = _options("vqav2", questions=str(FIX / "vqav2/questions.json"), annotations=str(FIX / "vqav2/annotations.json"),
                    image_root="/img")
    questions, m = _score("vqav2", opts)
    assert questions[0].images == (Path("/img/COCO_val2014_000000000042.jpg"),)
    assert questions[0].prompt == "How many dogs are there?\nAnswer the question using a single word or phrase."
    # "Two" -> 0.9; "T-shirt" vs ten raw "t-shirt" -> 0; question 70 missing -> 0.  0.9 / 3 = 30%
    assert m["overall"] == 30.0
    assert m["per_answer_type"] == {"number": 90.0, "other": 0.0, "yes/no": 0.0}
    assert (m["num_questions"], m["answered"], m["missing"], m["unknown_ids"]) == (3, 2, 1, 1)


def test_vizwiz_leaves_ground_truth_raw():
    questions, m = _score("vizwiz", _options("vizwiz", annotations=str(FIX / "vizwiz/val.json")))
    assert "respond with 'Unanswerable'" in questions[0].prompt
    # "shirt": one GT "shirt" -> 0.3; "Unanswerable" -> "unanswerable", 9 matches -> 1.0
    assert m["overall"] == 65.0
    assert m["per_answer_type"] == {"other": 30.0, "unanswerable": 100.0}


def test_textvqa_and_its_ocr_prompt_variant():
    base = dict(annotations=str(FIX / "textvqa/TextVQA_0.5.1_val.json"))
    questions, m = _score("textvqa", _options("textvqa", **base))
    assert m["overall"] == 80.0 and m["ocr_tokens_in_prompt"] is False
    assert "Reference OCR token" not in questions[0].prompt
    ocr = _options("textvqa", **base, ocr_tokens=str(FIX / "textvqa/TextVQA_Rosetta_OCR_v0.2_val.json"))
    questions, m = _score("textvqa", ocr)
    assert questions[0].prompt == ("what brand is this?\nReference OCR token: Coca, Cola, classic\n"
                                   "Answer the question using a single word or phrase.")
    assert "Reference OCR token" not in questions[1].prompt  # no tokens for that image
    assert m["ocr_tokens_in_prompt"] is True


def test_textvqa_reader_names_the_question_with_too_few_answers(tmp_path):
    bad = tmp_path / "val.json"
    bad.write_text('{"data": [{"question_id": 7, "image_id": "a", "question": "q?", "answers": ["x", "y"]}]}')
    with pytest.raises(TaskDataError, match="question 7 .* exactly 10 string answers"):
        get_task("textvqa").read(_options("textvqa", annotations=str(bad)))


def test_gqa_balanced_only():
    questions, m = _score("gqa", _options("gqa", questions=str(FIX / "gqa/testdev_balanced_questions.json")))
    assert [q.question_id for q in questions] == ["20968379", "20968380"]
    assert (m["overall"], m["binary"], m["open"]) == (50.0, 100.0, 0.0)
    assert m["unknown_ids"] == 1  # the prediction for the unbalanced question


def test_pope_per_split():
    questions, m = _score("pope", _options("pope", annotation_dir=str(FIX / "pope")))
    assert len(questions) == 6 and questions[0].question_id == "adversarial/1"
    s = m["splits"]
    assert s["adversarial"]["f1"] == 1.0 and s["adversarial"]["accuracy"] == 1.0
    assert s["popular"]["precision"] == 0.5 and s["popular"]["recall"] == 1.0 and s["popular"]["yes_ratio"] == 1.0
    assert s["popular"]["f1"] == pytest.approx(2 / 3)
    assert s["random"]["fn"] == 1 and s["random"]["f1"] == 0.0 and s["random"]["missing"] == 1
    assert m["overall"] == 55.56  # mean F1 (1 + 2/3 + 0) / 3
    assert m["missing"] == 1


def test_pope_rejects_unknown_split():
    with pytest.raises(TaskDataError, match="valid: adversarial, popular, random"):
        get_task("pope").read(_options("pope", annotation_dir=str(FIX / "pope"), splits="random,hard"))


def test_mme_both_layouts():
    questions, m = _score("mme", _options("mme", mme_root=str(FIX / "mme")))
    assert len(questions) == 8
    sub = m["subtasks"]
    assert (sub["existence"]["acc"], sub["existence"]["acc_plus"]) == (75.0, 50.0)
    assert (sub["artwork"]["acc"], sub["artwork"]["acc_plus"]) == (50.0, 0.0)
    assert sub["code_reasoning"]["score"] == 200.0
    assert (m["overall"], m["perception"], m["cognition"]) == (175.0, 175.0, 200.0)


def test_scienceqa_image_subset():
    opts = _options("scienceqa_img", problems=str(FIX / "scienceqa/problems.json"),
                    pid_splits=str(FIX / "scienceqa/pid_splits.json"), image_root="/sqa/test")
    questions, m = _score("scienceqa_img", opts, "scienceqa")
    assert [q.question_id for q in questions] == ["1", "3"]
    assert questions[0].images == (Path("/sqa/test/1/image.png"),)
    assert questions[1].prompt == ("Context: Moles live underground.\nWhich animal's feet are adapted for digging?\n"
                                   "A. mole\nB. hermit crab\n"
                                   "Answer with the option's letter from the given choices directly.")
    assert m["overall"] == 50.0 and m["failed_to_parse"] == 1 and m["unknown_ids"] == 1


def test_seed_image_questions():
    questions, m = _score("seed", _options("seed", questions=str(FIX / "seed/SEED-Bench.json"), image_root="/seed"))
    assert [q.question_id for q in questions] == ["101669", "101670"]
    assert questions[0].images == (Path("/seed/1454426_2591111986.jpg"),)
    assert m["overall"] == 50.0
    assert m["per_question_type"] == {"Instance Counting": 100.0, "Scene Understanding": 0.0}


def test_mmbench_rotations_and_circular_score():
    questions, m = _score("mmbench", _options("mmbench", tsv=str(FIX / "mmbench/mmbench_dev.tsv")))
    assert [q.question_id for q in questions] == [0, 1_000_000, 2_000_000, 1, 1_000_001]
    assert questions[1].prompt.startswith("What color is the square?\nA. blue\nB. green\nC. red\n")
    assert questions[1].truth.answer == "C"
    assert questions[3].prompt.startswith("Look carefully.\nWhich shape is shown?\nA. circle\nB. square\n")
    assert questions[0].images[0].startswith(b"\x89PNG")
    assert (m["overall"], m["single_pass"]) == (50.0, 100.0)
    assert m["per_category"] == {"attribute_recognition": 100.0, "object_localization": 0.0}


def test_missing_file_names_file_and_option(tmp_path):
    opts = _options("vqav2", questions=str(tmp_path / "nope.json"), annotations=str(FIX / "vqav2/annotations.json"))
    with pytest.raises(TaskDataError, match=r"nope.json \(given by --questions\)"):
        get_task("vqav2").read(opts)


def test_question_without_annotation_is_an_error(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text('{"annotations": []}')
    opts = _options("vqav2", questions=str(FIX / "vqav2/questions.json"), annotations=str(bad))
    with pytest.raises(TaskDataError, match="has no annotation"):
        get_task("vqav2").read(opts)


SYNTH = FIX / "synth"


def _score_file(name, options, predictions):
    task = get_task(name)
    questions = task.read(options)
    return questions, score_predictions(task, options, questions, read_predictions(predictions))


def test_synth_vqa_reports_chance_next_to_accuracy():
    questions, m = _score_file("synth_vqa", _options("synth_vqa", data=str(SYNTH)), SYNTH / "vqa_predictions.jsonl")
    assert questions[0].images == (SYNTH / "eval/images/000000000001.png",)
    # red -> 1, two -> "2" -> 1, green vs blue -> 0
    assert m["overall"] == 66.67
    assert m["vs_chance"] == {"color": {"accuracy": 50.0, "chance": 12.5}, "count": {"accuracy": 100.0, "chance": 20.0}}
    assert m["chance_overall"] == 15.0


def test_synth_pope_and_mc():
    _, m = _score_file("synth_pope", _options("synth_pope", data=str(SYNTH)), SYNTH / "pope_predictions.jsonl")
    assert m["splits"]["random"]["f1"] == 1.0 and m["splits"]["adversarial"]["f1"] == 0.0
    assert m["overall"] == 66.67
    questions, m = _score_file("synth_mc", _options("synth_mc", data=str(SYNTH)), SYNTH / "mc_predictions.jsonl")
    assert questions[1].images == (SYNTH / "eval/images/000000000002.png",)
    assert m["overall"] == 50.0 and m["per_question_type"] == {"color": 100.0, "count": 0.0}


def test_cli_score_errors_name_the_file_and_option(tmp_path, capsys):
    from eval.cli import main

    base = ["score", "--task", "vqav2", "--questions", str(FIX / "vqav2/questions.json"),
            "--annotations", str(FIX / "vqav2/annotations.json"), "--out", str(tmp_path)]
    assert main(base + ["--predictions", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl (given by --predictions)" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 420, "text": "2"}\n{"question_id": 421}\n')
    assert main(base + ["--predictions", str(bad)]) == 2
    assert "bad.jsonl:2: a prediction needs question_id, text" in capsys.readouterr().err
    assert main(["score", "--task", "nope", "--predictions", str(bad), "--out", str(tmp_path)]) == 2
    assert "valid tasks:" in capsys.readouterr().err


def _score_cli(tmp_path, predictions, questions=FIX / "vqav2/questions.json", out=None):
    """rc and stderr of `mm-eval score --task vqav2` on the fixture; a traceback fails the test."""
    import contextlib
    import io

    from eval.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        rc = main(["score", "--task", "vqav2", "--questions", str(questions), "--predictions", str(predictions),
                   "--annotations", str(FIX / "vqav2/annotations.json"), "--out", str(out or tmp_path / "out")])
    return rc, stderr.getvalue()


def test_score_refuses_bytes_that_are_not_utf8_naming_file_and_line(tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_bytes(b'{"question_id": 420, "text": "2"}\n{"question_id": 421, "text": "caf\xe9"}\n')
    assert _score_cli(tmp_path, predictions) == (2, f"mm-eval: error: {predictions}:2: not UTF-8 text\n")
    questions = tmp_path / "questions.json"
    questions.write_bytes((FIX / "vqav2/questions.json").read_bytes().replace(b"dogs", b"d\xf6gs"))
    rc, err = _score_cli(tmp_path, FIX / "vqav2/predictions.jsonl", questions)
    assert rc == 2 and err.startswith(f"mm-eval: error: {questions}:3 (--questions): not UTF-8 text")
    assert len(err.splitlines()) == 1


def test_score_refuses_a_text_that_is_not_a_string(tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"question_id": 420, "text": "2"}\n{"question_id": 421, "text": null}\n')
    assert _score_cli(tmp_path, predictions) == (2, f"mm-eval: error: {predictions}:2: text must be a string, not null\n")


def test_score_refuses_predictions_of_another_task(tmp_path):
    rc, err = _score_cli(tmp_path, FIX / "gqa/predictions.jsonl")
    assert rc == 2 and "none of its" in err and "another task" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_score_refuses_an_out_that_is_a_file(tmp_path):
    out = tmp_path / "metrics"
    out.write_text("not a folder")
    assert _score_cli(tmp_path, FIX / "vqav2/predictions.jsonl", out=out) == \
        (2, f"mm-eval: error: --out {out} is a file, not a folder\n")


def test_blank_lines_in_predictions_are_skipped(tmp_path):
    predictions = tmp_path / "p.jsonl"
    lines = (FIX / "vqav2/predictions.jsonl").read_text().splitlines()
    predictions.write_text(lines[0] + "\n\n  \n" + "\n".join(lines[1:]) + "\n\n")
    assert _score_cli(tmp_path, predictions)[0] == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["overall"] == 30.0


def test_mmbench_tsv_with_rotated_rows_is_used_as_is(tmp_path):
    header, row0, _ = (FIX / "mmbench/mmbench_dev.tsv").read_text().splitlines()
    cells = row0.split("\t")
    # A rotated copy as MMBench ships them: index + 1e6, options shifted, answer moved, image by reference.
    rotated = ["1000000", cells[1], cells[2], "blue", "green", "red", "nan", "C", cells[8], "0", *cells[10:]]
    tsv = tmp_path / "circular.tsv"
    tsv.write_text("\n".join([header, row0, "\t".join(rotated)]) + "\n")
    questions = get_task("mmbench").read(_options("mmbench", tsv=str(tsv)))
    assert [q.question_id for q in questions] == [0, 1_000_000]
    assert questions[1].images == questions[0].images
    assert questions[1].truth.source_index == 0 and questions[1].truth.answer == "C"


def test_reads_real_mm_prep_synth_output(tmp_path):
    from data_prep.synth.eval_splits import write_eval
    from data_prep.synth.generate import SynthConfig

    counts = write_eval(SynthConfig(num_eval=4), tmp_path)
    opts = {name: _options(name, data=str(tmp_path)) for name in ("synth_vqa", "synth_pope", "synth_mc")}
    read = {name: get_task(name).read(o) for name, o in opts.items()}
    assert len(read["synth_vqa"]) == counts["vqa"] and len(read["synth_mc"]) == counts["mc"]
    assert len(read["synth_pope"]) == sum(counts[f"pope_{s}"] for s in ("random", "popular", "adversarial"))
    assert all(image.is_file() for questions in read.values() for q in questions for image in q.images)
    # Oracle answers score 100 and every question program has a chance level.
    oracle = {"synth_vqa": lambda q: q.truth.answers[0], "synth_mc": lambda q: q.truth.answer,
              "synth_pope": lambda q: "Yes" if q.truth[1] else "No"}
    for name, questions in read.items():
        records = [{"question_id": q.question_id, "text": oracle[name](q)} for q in questions]
        metrics = score_predictions(get_task(name), opts[name], questions, records)
        assert metrics["overall"] == 100.0, name
    vqa_metrics = score_predictions(get_task("synth_vqa"), opts["synth_vqa"], read["synth_vqa"], [])
    assert vqa_metrics["missing"] == counts["vqa"]
    assert all(row["chance"] is not None for row in vqa_metrics["vs_chance"].values())


def test_duplicate_question_ids_are_an_error(tmp_path):
    from eval.pipeline import read_questions

    questions = tmp_path / "q.json"
    questions.write_text('{"questions": [{"image_id": 42, "question": "a?", "question_id": 420},'
                         ' {"image_id": 7, "question": "b?", "question_id": 420}]}')
    opts = _options("vqav2", questions=str(questions), annotations=str(FIX / "vqav2/annotations.json"))
    with pytest.raises(TaskDataError, match="question id 420 occurs twice"):
        read_questions("vqav2", opts)


def _cli(*argv) -> tuple[int, str]:
    """rc and stderr of `mm-eval ARGV`; a traceback fails the test."""
    import contextlib
    import io

    from eval.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        rc = main(list(argv))
    return rc, stderr.getvalue()


def test_mmbench_round_id_with_a_question_id_that_is_not_a_number(tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"question_id": "q-0", "round_id": 0, "text": "A"}\n')
    assert _cli("score", "--task", "mmbench", "--tsv", str(FIX / "mmbench/mmbench_dev.tsv"),
                "--predictions", str(predictions), "--out", str(tmp_path / "out")) == \
        (2, "mm-eval: error: --predictions: a prediction with question_id 'q-0' and round_id 0; "
            "with a round_id both must be whole numbers\n")


def test_mmbench_tsv_index_that_is_not_a_number(tmp_path):
    header, row0, _ = (FIX / "mmbench/mmbench_dev.tsv").read_text().splitlines()
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("\n".join([header, "\t".join(["zero", *row0.split("\t")[1:]])]) + "\n")
    assert _cli("score", "--task", "mmbench", "--tsv", str(tsv), "--predictions", str(FIX / "mmbench/predictions.jsonl"),
                "--out", str(tmp_path / "out")) == (2, f"mm-eval: error: {tsv} (--tsv) data row 1: index 'zero' is not a whole number\n")


@pytest.mark.parametrize("task, content, option, message", [
    ("seed", [{"question_id": "1"}], "--questions", "{file}: expected a JSON object, got [{{\"question_id\": \"1\"}}]"),
    ("seed", {"questions": ["x"]}, "--questions", "{file} questions entry 1: expected a JSON object, got \"x\""),
    ("gqa", {"q1": "x"}, "--questions", "{file} question q1: expected a JSON object, got \"x\""),
    ("scienceqa_img", [1], "--problems", "{file} (--problems): expected a JSON object, got [1]"),
])  # fmt: skip
def test_data_files_of_the_wrong_shape_are_named(tmp_path, task, content, option, message):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(content))
    extra = ["--pid-splits", str(FIX / "scienceqa/pid_splits.json")] if task == "scienceqa_img" else []
    rc, err = _cli("score", "--task", task, option, str(data), *extra, "--predictions",
                   str(FIX / "vqav2/predictions.jsonl"), "--out", str(tmp_path / "out"))
    assert (rc, err) == (2, f"mm-eval: error: {message.format(file=data)}\n")


def test_pope_line_that_is_not_an_object_is_named(tmp_path):
    for split in ("adversarial", "popular", "random"):
        (tmp_path / f"coco_pope_{split}.json").write_text((FIX / f"pope/coco_pope_{split}.json").read_text())
    (tmp_path / "coco_pope_random.json").write_text('["yes"]\n')
    assert _cli("score", "--task", "pope", "--annotation-dir", str(tmp_path), "--predictions",
                str(FIX / "pope/predictions.jsonl"), "--out", str(tmp_path / "out")) == \
        (2, f"mm-eval: error: {tmp_path / 'coco_pope_random.json'} record 1: expected a JSON object, got [\"yes\"]\n")
