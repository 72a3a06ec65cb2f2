"""Scorer gaps an independent check against the official code found: VLMEvalKit's current `can_infer` (MMBench),
MMBench TSVs read as pandas reads them (quoting, missing cells), GQA `eval.py`'s steps / words / distribution
metrics, and the image / video / total lines of LLaVA's SEED-Bench converter. Expected values by hand."""

import json
from pathlib import Path

import pytest

from eval.predictions import read_predictions
from eval.scoring.choice import ChoiceItem, extract_choice, seed_metrics
from eval.scoring.evaluate import score_predictions
from eval.scoring.gqa import GQAItem, gqa_chi_square, gqa_metrics, gqa_steps
from eval.tasks import TaskDataError, get_task

FIX = Path(__file__).parent / "fixtures" / "eval"
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
OPTIONS = {"A": "cat", "B": "dog", "C": "bird"}  # 10 characters of option text: answers over 20 never match by text


# --- MMBench: VLMEvalKit's can_infer at e8e78f05 ------------------------------------------------------------


@pytest.mark.parametrize("text, options, choice", [
    # An answer carrying the API-failure marker never picks by letter; only option texts may decide, and only
    # when the answer is at most twice as long as the option texts together (38 > 2 * 10 here: undecided).
    ("Failed to obtain answer via API. A dog", {"A": "a cat", "B": "a dog"}, None),
    ("Failed to obtain answer via API. A dog running", {"A": "a cat sitting", "B": "a dog running"}, "B"),
    ("Failed to obtain answer via API. Z", OPTIONS, None),
    ("Failed to obtain answer via API. Cannot determine the answer", OPTIONS, None),  # before the refusals
    # One option letter decides only when its first occurrence is among the last four words.
    ("I would pick option B here", OPTIONS, "B"),
    ("B is wrong, the cat", OPTIONS, "A"),               # "B" is word 1 of 5: undecided; then the text "cat"
    ("A is my answer because I see a cat", OPTIONS, None),  # letter too early, text too long (34 > 20)
    ("A A A A A", OPTIONS, None),                         # first occurrence is word 1 of 5 (0 > 0 fails)
    ("The answer is C.", OPTIONS, "C"),
    # "answer is X" (case-insensitive, X in A-D and an option) decides when the letters do not.
    ("the answer is a dog", OPTIONS, "A"),
    ("A and B are wrong; the answer is C", OPTIONS, "C"),
    ("The correct answer is **B**. Here is why: dogs bark", OPTIONS, "B"),
    ("the answer is d", OPTIONS, None),                   # D is no option here (and the text is too long)
    # Text rule: longer than twice the option texts together is undecided.
    ("I am quite sure that it is a dog", OPTIONS, None),
    ("a dog", OPTIONS, "B"),
    ("Z", OPTIONS, "Z"),
    ("Cannot determine the answer", OPTIONS, "Z"),
])  # fmt: skip
def test_mmbench_choice_follows_current_vlmevalkit(text, options, choice):
    assert extract_choice(text, options) == choice


# --- MMBench: the TSV as pandas reads it ---------------------------------------------------------------------

HEADER = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit"
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGNkZGJmYGBgYmBgYGBgAAAAcAAKM8X3iAAAAABJRU5ErkJggg==")


def _tsv(tmp_path, *rows, name="mmbench.tsv"):
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


# Row 0: a quoted question with doubled quotes, a quoted hint holding a newline, option C "None" (missing for
# pandas) before D "blue". Row 1: hint "NAN" (not missing for pandas, "nan" for LLaVA's is_none), C and D empty.
ROW0 = f'0\t"""Stop"" sign"\t"Line one\nline two"\tred\t"say ""hi"""\tNone\tblue\tA\tcat1\t{PNG}\tsrc\tl2\tnan\tdev'
ROW1 = f"1\tWhich?\tNAN\tx\ty\t\t\tB\tcat2\t{PNG}\tsrc\tl2\t\tdev"


def _llava_prompts(path):
    """What LLaVA's `model_vqa_mmbench.py --all-rounds --single-pred-prompt` builds from this TSV (its pandas
    reading, its option and hint rules), written out independently for the check."""
    import math

    import pandas as pd

    def none(value):
        return value is None or (isinstance(value, float) and math.isnan(value)) or \
            (isinstance(value, str) and value.lower() in ("nan", "none"))

    prompts = {}
    for _, row in pd.read_table(path).iterrows():
        options = []
        for letter in "ABCD":
            if none(row[letter]):
                break
            options.append(row[letter])
        for round_id in range(len(options)):
            question = row["question"] if none(row["hint"]) else row["hint"] + "\n" + row["question"]
            for letter, text in zip("ABCD", options):
                question = question + "\n" + letter + ". " + text
            prompts[int(row["index"]) + round_id * 1_000_000] = question + "\n" + LETTER_ANSWER
            options = options[1:] + options[:1]
    return prompts


def test_mmbench_tsv_quoting_newlines_and_missing_cells(tmp_path):
    path = _tsv(tmp_path, ROW0, ROW1)
    questions = get_task("mmbench").read(get_task("mmbench").options_type(tsv=str(path)))
    assert {q.question_id: q.prompt for q in questions} == _llava_prompts(path)
    first = questions[0]
    assert first.prompt == f'Line one\nline two\n"Stop" sign\nA. red\nB. say "hi"\n{LETTER_ANSWER}'
    assert questions[2].prompt == f"Which?\nA. x\nB. y\n{LETTER_ANSWER}"  # "NAN" hint: none for LLaVA
    assert [q.question_id for q in questions] == [0, 1_000_000, 1, 1_000_001]
    # Generated rotations are matched against the options they show.
    assert first.truth.options == {"A": "red", "B": 'say "hi"'}
    assert questions[1].truth.options == {"A": 'say "hi"', "B": "red"} and questions[1].truth.answer == "B"


def test_mmbench_rotated_rows_match_against_vlmevalkit_choices(tmp_path):
    # A TSV holding its rotations: each row's answer is matched against VLMEvalKit's build_choices of that
    # row, every column A-Z whose cell pandas does not read as missing (D "blue" counts; C "None" does not).
    rotated = ROW0.replace("0\t", "1000000\t", 1).replace("\tA\tcat1\t", "\tA\tcat1\t", 1)
    path = _tsv(tmp_path, ROW0, rotated.replace(PNG, "0"))
    questions = get_task("mmbench").read(get_task("mmbench").options_type(tsv=str(path)))
    assert [q.question_id for q in questions] == [0, 1_000_000]
    assert questions[0].truth.options == {"A": "red", "B": 'say "hi"', "D": "blue"}
    assert questions[1].images == questions[0].images
    predictions = [{"question_id": 0, "text": "blue"}, {"question_id": 1_000_000, "text": "A"}]
    metrics = score_predictions(get_task("mmbench"), None, questions, predictions)
    assert (metrics["overall"], metrics["single_pass"]) == (0.0, 0.0)  # "blue" picks D, a choice the prompt hid


@pytest.mark.parametrize("rows, message", [
    ([f'0\t"unterminated\tnan\tred\tblue\tnan\tnan\tA\tc\t{PNG}\ts\tl\tnan\tdev'], r"not a readable TSV: .*EOF inside string"),
    ([ROW1, ROW1.replace("1\t", "2\t", 1) + "\textra\tcells"], r"not a readable TSV: .*Expected 14 fields in line 3, saw 16"),
    ([ROW1, "2\tShort row?\tnan\tx"], r"data row 2 \(index '2'\): answer nan is not one of its options"),
    ([ROW1.replace("\tB\tcat2", "\tC\tcat2")], r"data row 1 \(index '1'\): answer 'C' is not one of its options \['A', 'B'\]"),
    ([ROW1.replace("Which?", "")], r"data row 1 \(index '1'\): no question"),
])  # fmt: skip
def test_mmbench_malformed_tsv_is_a_clear_error(tmp_path, rows, message):
    path = _tsv(tmp_path, *rows)
    with pytest.raises(TaskDataError, match=rf"{path} \(--tsv\).*{message}"):
        get_task("mmbench").read(get_task("mmbench").options_type(tsv=str(path)))


def test_mmbench_empty_tsv_and_missing_columns(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(TaskDataError, match="empty file"):
        get_task("mmbench").read(get_task("mmbench").options_type(tsv=str(empty)))
    no_image = tmp_path / "no_image.tsv"
    no_image.write_text("index\tquestion\tA\tB\tanswer\n0\tq\tx\ty\tA\n")
    with pytest.raises(TaskDataError, match=r"missing columns \['image'\]"):
        get_task("mmbench").read(get_task("mmbench").options_type(tsv=str(no_image)))


# --- GQA: eval.py's steps, words and distribution --------------------------------------------------------------


def _step(operation, argument=""):
    return {"operation": operation, "argument": argument, "dependencies": []}


def _gqa_question(question, answer, structural, semantic_type, group, program, balanced=True):
    return {"question": question, "answer": answer, "imageId": "n1", "isBalanced": balanced,
            "types": {"structural": structural, "semantic": semantic_type, "detailed": "x"},
            "groups": {"global": group, "local": "l"}, "semantic": program}


GQA_QUESTIONS = {
    # words 4; steps 1 (the "exist" step does not count)
    "q1": _gqa_question("Is there a cup?", "yes", "verify", "obj", None, [_step("select", "cup (1)"), _step("exist", "?")]),
    # words 5; steps 2 ("query: color" is a step, only "query: name" is not)
    "q2": _gqa_question("What color is the cup?", "white", "query", "attr", "color",
                        [_step("select", "cup (1)"), _step("query", "color")]),
    "q3": _gqa_question("What color is the table?", "brown", "query", "attr", "color",
                        [_step("select", "table (2)"), _step("query", "color")]),
    "q4": _gqa_question("What color is the chair?", "white", "query", "attr", "color",
                        [_step("select", "chair (3)"), _step("query", "color")]),
    # words 5; steps 2 (select, relate; "query: name" does not count)
    "q5": _gqa_question("What is on the table?", "cup", "query", "rel", "object",
                        [_step("select", "table (2)"), _step("relate", "_,on,s (1)"), _step("query", "name")]),
    # words 10; steps 3 ("choose name: ..." does not count)
    "q6": _gqa_question("Which is larger, the white cup or the big plate?", "plate", "choose", "obj", "object",
                        [_step("select", "cup (1)"), _step("filter color", "white"), _step("select", "plate (4)"),
                         _step("choose name", "cup|plate")]),
    "q7": _gqa_question("Is it unbalanced?", "no", "verify", "obj", "object", [_step("exist", "?")], balanced=False),
}
# q1, q2, q5 right ("Yes." and "White" once prepared); q3, q4 wrong; q6 without a prediction.
GQA_PREDICTIONS = {"q1": "Yes.", "q2": "White", "q3": "White.", "q4": "black", "q5": "cup", "q7": "no"}


def test_gqa_steps_follow_get_steps_num():
    assert gqa_steps([_step("exist", "?")]) == 0
    assert gqa_steps([_step("query", "name"), _step("query", "color"), _step("choose", "name")]) == 2
    assert gqa_steps([_step("select", "existing thing")]) == 0  # a substring of "operation: argument"


def test_gqa_length_steps_and_distribution_by_hand(tmp_path):
    questions_file = tmp_path / "testdev_balanced_questions.json"
    questions_file.write_text(json.dumps(GQA_QUESTIONS))
    task = get_task("gqa")
    options = task.options_type(questions=str(questions_file))
    questions = task.read(options)
    assert [q.question_id for q in questions] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    records = [{"question_id": qid, "text": text} for qid, text in GQA_PREDICTIONS.items()]
    m = score_predictions(task, options, questions, records)
    assert (m["overall"], m["binary"], m["open"]) == (50.0, 50.0, 50.0)  # 3/6; q1, q6: 1/2; q2-q5: 2/4
    assert m["per_reasoning_steps"] == {"1": {"accuracy": 100.0, "questions": 1}, "2": {"accuracy": 50.0, "questions": 4},
                                        "3": {"accuracy": 0.0, "questions": 1}}
    # numeric order, as eval.py sorts its integer keys ("10" after "5")
    assert list(m["per_question_words"]) == ["4", "5", "10"]
    assert m["per_question_words"]["5"] == {"accuracy": 50.0, "questions": 4}
    # color: gold white 2, brown 1; predicted white 2, black 1 -> (2-2)^2/2 + (0-1)^2/1 = 1, weight 3
    # object: gold cup 1, plate 1; predicted cup 1 (q6 none) -> 0 + (0-1)^2/1 = 1, weight 2
    # q1 has no global group.  (1 * 3 + 1 * 2) / 5 = 1.0; eval.py prints 1.0 / 100 with 2 decimals
    items = [q.truth for q in questions]
    prepared = ["yes", "white", "white", "black", "cup", None]
    assert gqa_chi_square(items, prepared) == 1.0
    assert m["distribution"] == 0.01
    assert m["unknown_ids"] == 1 and m["missing"] == 1


def test_gqa_distribution_weights_every_group_and_ignores_other_answers():
    # group g: gold a 4, b 1; predicted a 2, c 3 (c is no gold answer: adds nothing)
    items = [GQAItem("a", p, "query", "attr", global_group="g") for p in ("a", "a", "c", "c")] + \
        [GQAItem("b", "c", "query", "attr", global_group="g")]
    # (2-4)^2/4 + (0-1)^2/1 = 2.0, one group: 2.0; as printed 0.02
    assert gqa_chi_square(items, [i.prediction for i in items]) == 2.0
    assert gqa_metrics(items)["distribution"] == 0.02
    # a single-question group counts fully: (0-1)^2/1 = 1 with weight 1 -> (2.0 * 5 + 1 * 1) / 6
    lone = GQAItem("z", "y", "query", "attr", global_group="h")
    assert gqa_chi_square(items + [lone], [i.prediction for i in items] + ["y"]) == pytest.approx(11 / 6)
    # no question in any group: eval.py divides by zero; reported as null
    assert gqa_metrics([GQAItem("a", "a", "query", "attr")])["distribution"] is None


def test_gqa_question_without_semantic_program_is_named(tmp_path):
    bad = dict(GQA_QUESTIONS["q1"])
    del bad["semantic"]
    questions_file = tmp_path / "q.json"
    questions_file.write_text(json.dumps({"q1": bad}))
    with pytest.raises(TaskDataError, match="question q1: missing field 'semantic'"):
        get_task("gqa").read(get_task("gqa").options_type(questions=str(questions_file)))


# --- SEED-Bench: LLaVA's image / video / total lines -------------------------------------------------------------


def _seed(tmp_path, predictions, **options):
    task = get_task("seed")
    opts = task.options_type(questions=str(FIX / "seed/SEED-Bench.json"), image_root="/seed", **options)
    questions = task.read(opts)
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"question_id": q, "text": t}) + "\n" for q, t in predictions.items()))
    return questions, score_predictions(task, opts, questions, read_predictions(path))


def test_seed_video_lines_when_video_questions_are_read(tmp_path):
    predictions = {101669: "A", 101670: "C.", 201001: "B"}
    questions, m = _seed(tmp_path, predictions, video_frames="/frames/{question_type_id}/{question_id}.png")
    assert [q.question_id for q in questions] == ["101669", "101670", "201001"]
    assert questions[2].images == (Path("/frames/10/201001.png"),)
    assert questions[2].prompt.startswith("What is the person doing?\nA. Sitting\nB. Running\n")
    # image 1/2, video 1/1, total 2/3 = 66.666... printed 66.67
    assert (m["overall"], m["image"], m["video"], m["total"]) == (50.0, 50.0, 100.0, 66.67)
    assert (m["image_questions"], m["video_questions"]) == (2, 1)
    assert m["per_question_type"] == {"Action Recognition": 100.0, "Instance Counting": 100.0,
                                      "Scene Understanding": 0.0}
    # a video question without a prediction is wrong, as in the converter
    _, m = _seed(tmp_path, {101669: "A", 101670: "C"}, video_frames="/frames/{question_id}.png")
    assert (m["image"], m["video"], m["total"], m["missing"]) == (100.0, 0.0, 66.67, 1)


def test_seed_without_video_frames_reports_image_accuracy_only(tmp_path):
    questions, m = _seed(tmp_path, {101669: "A", 101670: "C.", 201001: "B"})
    assert [q.question_id for q in questions] == ["101669", "101670"]
    assert m["overall"] == 50.0 and m["unknown_ids"] == 1
    assert not {"image", "video", "total"} & set(m)


def test_seed_metrics_rounds_like_the_converter():
    # 1/3 * 100 = 33.33333333333333 -> "33.33"; 2/3 * 100 = 66.66666666666666 -> "66.67"
    items = [ChoiceItem("A", "A", data_type="video")] + [ChoiceItem("A", "B", data_type="video")] * 2 + \
        [ChoiceItem("A", "A")] * 2 + [ChoiceItem("A", "B")]
    m = seed_metrics(items)
    assert (m["video"], m["image"], m["total"]) == (33.33, 66.67, 50.0)
    assert f"{1 / 3 * 100:.2f}" == "33.33" and f"{2 / 3 * 100:.2f}" == "66.67"


def test_seed_bad_video_frame_pattern_is_named(tmp_path):
    with pytest.raises(TaskDataError, match=r"--video-frames '\{nope\}.png' cannot be filled"):
        _seed(tmp_path, {}, video_frames="{nope}.png")
