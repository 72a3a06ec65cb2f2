"""`ifeval_mm` through `mm-eval`: records, in-force instructions across turns, the four IFEval accuracies,
MMMT-IF's PIF and PIF-N-K, against hand computations; and one `run` on the tiny model."""

import json
from pathlib import Path

import pytest
from PIL import Image

from eval.cli import main

LOWER, NO_COMMA = "change_case:english_lowercase", "punctuation:no_comma"
QUOTE, PLACEHOLDERS = "startend:quotation", "detectable_content:number_placeholders"
POSTSCRIPT, KEYWORDS, WORDS = "detectable_content:postscript", "keywords:existence", "length_constraints:number_words"

RECORDS = [
    # Google's layout; an id no checker knows is counted and ignored
    {"key": "r1", "image": "img/a.png", "prompt": "Describe it.", "instruction_id_list": [LOWER, "foo:bar", NO_COMMA],
     "kwargs": [{}, {}, {}]},
    # Hugging Face's layout pads kwargs with nulls; the 0 must survive (a dropped 0 is a missing argument)
    {"key": "r2", "image": ["img/a.png", "img/b.png"], "prompt": "Compare them.", "instruction_id_list": [QUOTE, PLACEHOLDERS],
     "kwargs": [{"num_placeholders": None, "keywords": None}, {"num_placeholders": 0, "keywords": None}]},
    {"key": "m", "image": "img/a.png", "turns": [
        {"prompt": "From now on answer in lowercase. What is it?", "instruction_id_list": [LOWER], "kwargs": [{}]},
        {"prompt": "Add a postscript and say red.", "instruction_id_list": [POSTSCRIPT, KEYWORDS],
         "kwargs": [{"postscript_marker": "P.S."}, {"keywords": ["red"]}]}]},
    # the same id again replaces the earlier kwargs (fewer than 2 words, then fewer than 50)
    {"key": "m2", "turns": [
        {"prompt": "Be brief.", "instruction_id_list": [WORDS], "kwargs": [{"num_words": 2, "relation": "less than"}]},
        {"prompt": "Now say more.", "instruction_id_list": [WORDS], "kwargs": [{"num_words": 50, "relation": "less than"}]}]},
]
ANSWERS = {  # m2/0 is missing: an empty response
    "r1": "there is a small red circle at the top of the picture, and nothing else.",
    "r2": 'Sure:\n"quoted"',
    "m/0": "there is a small red circle at the top of the picture.",
    "m/1": "the picture shows one small red circle and nothing else at all.\nP.S. done",
    "m2/1": "three words here",
}


def _write_data(root: Path, records=RECORDS) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (32, 32), color).save(root / "img" / name)
    path = root / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _write_predictions(path: Path, answers: dict, extra=()) -> Path:
    lines = [{"question_id": qid, "text": text} for qid, text in answers.items()] + list(extra)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _score(tmp_path, *extra) -> dict:
    questions = _write_data(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "pred.jsonl", ANSWERS,
                                     extra=[{"question_id": "m/0", "text": "IGNORED, A DUPLICATE"}])
    assert main(["score", "--task", "ifeval_mm", "--questions", str(questions), "--predictions", str(predictions),
                 "--out", str(tmp_path / "out"), *extra]) == 0
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_reader_ids_images_and_in_force_instructions(tmp_path):
    from eval.tasks import get_task
    from eval.tasks.ifeval_mm import IFEvalMMOptions

    questions = get_task("ifeval_mm").read(IFEvalMMOptions(questions=str(_write_data(tmp_path))))
    by_id = {q.question_id: q for q in questions}
    assert list(by_id) == ["r1", "r2", "m/0", "m/1", "m2/0", "m2/1"]
    assert by_id["r2"].images == (tmp_path / "img/a.png", tmp_path / "img/b.png")  # relative to the file's folder
    assert by_id["m2/0"].images == ()
    assert by_id["m/1"].history == (("m/0", RECORDS[2]["turns"][0]["prompt"]),)
    assert [i.instruction_id for i in by_id["m/1"].truth.in_force] == [LOWER, POSTSCRIPT, KEYWORDS]
    assert by_id["m2/1"].truth.in_force[0].kwargs == {"num_words": 50, "relation": "less than"}
    assert by_id["r2"].truth.in_force[1].kwargs == {"num_placeholders": 0}
    assert by_id["r1"].truth.unknown_ids == ("foo:bar",)


def test_scores_equal_a_hand_computation(tmp_path):
    """English lowercase also needs langdetect to say English, as in the reference. Verdicts (strict / loose): r1 lower T/T, no_comma F/F; r2 quotation F/T (loose drops the first line),
    placeholders>=0 T/T; m/0 lower T/T; m/1 lower F/T (loose drops the P.S. line), postscript T/T, red T/T;
    m2/0 (missing, empty) F/F; m2/1 words<50 T/T."""
    metrics = _score(tmp_path)
    assert metrics["overall"] == metrics["prompt_strict"] == 33.33  # m/0 and m2/1 of 6
    assert metrics["prompt_loose"] == 66.67  # r2, m/0, m/1, m2/1
    assert metrics["instruction_strict"] == 60.0 and metrics["instruction_loose"] == 80.0  # 6 and 8 of 10
    assert (metrics["prompts"], metrics["instructions"]) == (6, 10)
    assert (metrics["missing"], metrics["duplicates"], metrics["unknown_instructions"]) == (1, 1, 1)
    assert metrics["unknown_instruction_ids"] == ["foo:bar"]
    assert metrics["per_instruction"][LOWER] == {"n": 3, "strict": 66.67, "loose": 100.0}
    assert metrics["per_instruction"][WORDS] == {"n": 2, "strict": 50.0, "loose": 50.0}
    assert metrics["per_instruction"][QUOTE] == {"n": 1, "strict": 0.0, "loose": 100.0}
    # PIF over the multi-turn responses: m/0 1, m/1 2/3, m2/0 0, m2/1 1
    assert metrics["pif"] == 66.67
    assert metrics["pif_per_turn"] == {"0": 50.0, "1": 83.33}
    assert "pif_n_k" not in metrics
    assert "## per_instruction" in (tmp_path / "out" / "metrics.md").read_text()


def test_pif_n_k_over_sampled_runs(tmp_path):
    """Perfect responses per turn: main run m/0, m2/1; second run m/0, m/1, m2/0 -> counts 2, 1, 1, 1."""
    second = _write_predictions(tmp_path / "second.jsonl", {
        "m/0": ANSWERS["m/0"], "m/1": "the picture shows one small red circle and nothing else at all. p.s. that is all there is.",
        "m2/0": "hi", "m2/1": ""})
    metrics = _score(tmp_path, "--pif-samples", str(second))
    assert metrics["pif_n_k"] == {"n": 2, "k1": 100.0, "k2": 25.0}


def test_single_turn_only_file_has_no_pif(tmp_path):
    questions = _write_data(tmp_path / "data", RECORDS[:2])
    predictions = _write_predictions(tmp_path / "p.jsonl", {"r1": ANSWERS["m/0"], "r2": '"x"'})
    assert main(["score", "--task", "ifeval_mm", "--questions", str(questions), "--predictions", str(predictions),
                 "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "pif" not in metrics and metrics["prompt_strict"] == 100.0


@pytest.mark.parametrize("record, message", [
    ({"key": "x", "prompt": "p", "instruction_id_list": [WORDS], "kwargs": [{"num_words": 3}]}, "record 1"),
    ({"key": "x", "prompt": "p", "instruction_id_list": [LOWER, NO_COMMA], "kwargs": [{}]}, "equal length"),
    ({"key": "x", "turns": []}, "non-empty list"),
    ({"key": "x", "image": 5, "prompt": "p", "instruction_id_list": [], "kwargs": []}, "'image' must be"),
    ({"prompt": "p", "instruction_id_list": [], "kwargs": []}, "missing field 'key'"),
])
def test_bad_records_are_one_clear_error(tmp_path, capsys, record, message):
    questions = _write_data(tmp_path / "data", [record])
    predictions = _write_predictions(tmp_path / "p.jsonl", {"x": "y"})
    code = main(["score", "--task", "ifeval_mm", "--questions", str(questions), "--predictions", str(predictions),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "mm-eval: error:" in err and message in err and "Traceback" not in err


def test_run_answers_every_turn_on_the_tiny_model(tmp_path):
    import mm
    import torch
    from mm.tiny import tiny_vlm_config

    torch.manual_seed(0)
    mm.build_vlm(tiny_vlm_config()).save_pretrained(tmp_path / "ckpt")
    questions = _write_data(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["run", "--task", "ifeval_mm", "--questions", str(questions), "--checkpoint", str(tmp_path / "ckpt"),
                 "--out", str(out), "--device", "cpu", "--max-new-tokens", "4", "--image-workers", "1"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["question_id"] for r in records) == sorted(["r1", "r2", "m/0", "m/1", "m2/0", "m2/1"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["missing"] == 0 and "pif" in metrics and metrics["prompts"] == 6
