"""`lmms-eval --model mm` end to end, offline, on the tiny model and two local lmms-eval tasks.

The tasks are YAML files over a local parquet file (images embedded, as in lmms-lab's datasets): a
generate_until task scored by exact match and a multiple-choice (log-likelihood) task scored by accuracy.
lmms-eval runs through its own CLI in a subprocess, so the entry-point discovery of `--model mm` is tested
too. Its answers must be mm-eval's (eval.runner.Generator, one question at a time) and its log-likelihoods a
direct forward pass over the training-format encoding of the answer (mm.chat.encode_conversation).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import ImageFile

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e .[lmms])")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # in case importing lmms_eval already flipped it (see the fixture below)


@pytest.fixture(autouse=True)
def _pil_truncated_images_stay_refused():
    """lmms_eval.api.task sets PIL's process-wide ImageFile.LOAD_TRUNCATED_IMAGES = True when imported; in
    this test process that would make every later test accept truncated images (mm-prep's checks among them)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    yield
    ImageFile.LOAD_TRUNCATED_IMAGES = False

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
CHOICES = sorted(COLOURS)
MAX_NEW = 6
UNTIL = "\n\n"
BATCH = 3  # the 7 generation docs fill 3 batches, one padded to a different width from the others

# (question, colours of its images); the explicit "<image>" keeps its place in the text
DOCS = [
    ("What color is the square?", ["red"]),
    ("Is there a square in the image?", ["blue"]),
    ("What is the main color of this picture, described in a few words if you can?", ["green"]),
    ("Which picture has the yellow square?", ["yellow", "red"]),
    ("How many squares are there?", []),  # text only
    ("Look at <image> first, then tell me its color.", ["blue"]),
    ("Compare the two pictures: which colors do you see?", ["green", "yellow"]),
]
SHORT = "\nAnswer the question using a single word or phrase."


def _image(colour: str, width: int, height: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (245, 245, 245))
    ImageDraw.Draw(image).rectangle((4, 4, 24, 24), fill=COLOURS[colour])
    return image


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: lmms-eval's PIL image and mm's decode see the same pixels
    return buffer.getvalue()


GEN_YAML = """\
task: mm_tiny_gen
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function mm_tiny_utils.doc_to_visual
doc_to_text: !function mm_tiny_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new}
  until: ["\\n\\n"]
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

MC_YAML = """\
task: mm_tiny_mc
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function mm_tiny_utils.doc_to_visual
doc_to_text: !function mm_tiny_utils.doc_to_text
doc_to_choice: {choices}
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

UTILS = '''\
def doc_to_visual(doc):
    return [image.convert("RGB") for image in doc["images"]]


def doc_to_text(doc):
    return doc["question"] + {short!r}
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny checkpoint, the images, and the reference answers of mm-eval's Generator."""
    import mm
    from mm.tiny import tiny_vlm_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lmms")
    torch.manual_seed(0)
    model = mm.build_vlm(tiny_vlm_config()).eval()
    model.save_pretrained(root / "ckpt")
    model = mm.load_pretrained(root / "ckpt")
    images = [[_image(colour, 40 + 7 * i + 5 * k, 70 - 4 * i) for k, colour in enumerate(colours)]
              for i, (_, colours) in enumerate(DOCS)]
    yield root, model, images
    torch.set_num_threads(threads)


def _reference_answers(model, images) -> list[str]:
    """mm-eval's answers, one question per generate() call (no padding)."""
    from eval.runner import GenerationSettings, Generator
    from eval.tasks.base import Question

    generator = Generator(model, GenerationSettings(max_new_tokens=MAX_NEW, template=model.config.chat_template),
                          torch.float32)
    answers = []
    for i, ((question, _), pictures) in enumerate(zip(DOCS, images)):
        own_placeholders = "<image>" in question
        sources = tuple(_png(picture) for picture in pictures)
        batch = [Question(i, question + SHORT, () if own_placeholders else sources)]
        pixels = generator.load_images([Question(i, "", sources)])
        answers.append(generator.answer(batch, pixels)[0].split(UNTIL)[0].strip())
    return answers


def _reference_loglikelihood(model, question: str, pictures, choice: str) -> tuple[float, bool]:
    """log P(choice | question) from one forward pass over the training-format conversation, EOS left out."""
    from dataclasses import asdict

    from mm.chat import IGNORE_INDEX, encode_conversation
    from mm.transforms import ImageTransform

    placeholders = "" if "<image>" in question else "<image>\n" * len(pictures)
    conversation = [{"from": "human", "value": placeholders + question},
                     {"from": "gpt", "value": choice}]
    encoded = encode_conversation(conversation, model.tokenizer, model.config.chat_template,
                                  tokens_per_image=model.tokens_per_image)
    scored = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX][:-1]  # the answer, not EOS
    transform = ImageTransform(**asdict(model.image_transform_config))
    pixels = transform.normalize(torch.stack([transform(p) for p in pictures])) if pictures else None
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        logprobs = model(ids, pixels).logits[0].float().log_softmax(-1)
    targets = ids[0, scored]
    rows = logprobs[[i - 1 for i in scored]]
    return rows.gather(-1, targets[:, None]).sum().item(), bool((rows.argmax(-1) == targets).all())


def _write_tasks(root: Path, images, gen_targets: list[str], mc_labels: list[int]) -> Path:
    import datasets

    features = datasets.Features({"question": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
                                  "answer": datasets.Value("string"), "label": datasets.Value("int64")})
    rows = {"question": [q for q, _ in DOCS],
            "images": [[{"bytes": _png(p), "path": None} for p in pictures] for pictures in images],
            "answer": gen_targets, "label": mc_labels}
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    data = tasks / "tiny.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(data))
    (tasks / "mm_tiny_utils.py").write_text(UTILS.format(short=SHORT))
    (tasks / "mm_tiny_gen.yaml").write_text(GEN_YAML.format(data=data, max_new=MAX_NEW))
    (tasks / "mm_tiny_mc.yaml").write_text(MC_YAML.format(data=data, choices=json.dumps(CHOICES)))
    return tasks


def _samples(out: Path, task: str) -> dict[int, dict]:
    [path] = out.rglob(f"*_samples_{task}.jsonl")
    return {record["doc_id"]: record for record in map(json.loads, path.read_text().splitlines())}


def test_found_through_the_entry_point():
    from lmms_eval.models import get_model

    from eval.lmms.model import MMModel

    try:
        found = get_model("mm")
    except ValueError as error:
        pytest.fail(f"lmms-eval does not know --model mm ({error}); was mm installed from this pyproject.toml "
                    "(pip install -e .[lmms])?")
    assert found is MMModel


def test_model_args(setup):
    """model_args win over lmms-eval's CLI options (its --batch_size defaults to 1); unknown ones are named."""
    from eval.lmms.model import MMModel

    root = setup[0]
    lm = MMModel.create_from_arg_string(f"pretrained={root / 'ckpt'},batch_size=5,max_new_tokens=7",
                                        {"batch_size": 1, "max_batch_size": None, "device": "cpu"})
    assert (lm.batch_size, lm.default_max_new_tokens, str(lm.device)) == (5, 7, "cpu")
    with pytest.raises(ValueError, match="unknown model_args \\['conv_template'\\]"):
        MMModel.create_from_arg_string(f"pretrained={root / 'ckpt'},conv_template=vicuna_v1", {"device": "cpu"})


def test_lmms_eval_cli_matches_mm(setup):
    root, model, images = setup
    answers = _reference_answers(model, images)
    # Half the generation targets are mm's own answers (exact match 4/7), the others cannot match.
    targets = [answer if i % 2 == 0 else f"no such answer {i}" for i, answer in enumerate(answers)]
    reference_ll = [[_reference_loglikelihood(model, q + SHORT, pictures, choice) for choice in CHOICES]
                    for (q, _), pictures in zip(DOCS, images)]
    best = [max(range(len(CHOICES)), key=lambda c: row[c][0]) for row in reference_ll]
    labels = [b if i % 3 else (b + 1) % len(CHOICES) for i, b in enumerate(best)]  # 4 of 7 right
    tasks = _write_tasks(root, images, targets, labels)

    out = root / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf"),
           "HF_DATASETS_CACHE": str(root / "hf" / "datasets"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LMMS_EVAL_PLUGINS", None)  # found through the entry point alone
    lmms_eval = Path(sys.executable).parent / "lmms-eval"
    command = [str(lmms_eval), "--model", "mm",
               "--model_args", f"pretrained={root / 'ckpt'},batch_size={BATCH},device=cpu", "--tasks", "mm_tiny_gen,mm_tiny_mc", "--include_path", str(tasks), "--output_path", str(out),
               "--log_samples", "--verbosity", "WARNING"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    # lmms-eval logs an error and still exits 0: its results file is the proof of a finished run
    assert done.returncode == 0 and list(out.rglob("*_results.json")), done.stdout[-4000:] + done.stderr[-4000:]

    generated = _samples(out, "mm_tiny_gen")
    assert sorted(generated) == list(range(len(DOCS)))
    assert [generated[i]["filtered_resps"] for i in range(len(DOCS))] == answers

    # lmms-eval's multiple-choice scorer takes the argmin: mm answers -log P (and is_greedy)
    scored = _samples(out, "mm_tiny_mc")
    for i, row in enumerate(reference_ll):
        got = [(float(nll), greedy) for nll, greedy in scored[i]["filtered_resps"]]  # the log writes str()s
        assert [g for _, g in got] == [str(g) for _, g in row], f"doc {i}: is_greedy differs"
        assert [-nll for nll, _ in got] == pytest.approx([ll for ll, _ in row], rel=1e-4, abs=1e-4), f"doc {i}"

    [results_file] = [p for p in out.rglob("*_results.json")]
    results = json.loads(results_file.read_text())["results"]
    assert results["mm_tiny_gen"]["exact_match,none"] == pytest.approx(4 / 7)
    assert results["mm_tiny_mc"]["acc,none"] == pytest.approx(4 / 7)


def test_generation_settings_from_gen_kwargs(setup):
    """until cuts the answer, max_new_tokens bounds it, temperature > 0 samples (reproducibly); requests with
    different settings in one call."""
    from lmms_eval.api.instance import Instance

    from eval.lmms.model import MMModel

    root, model, images = setup
    lm = MMModel(pretrained=str(root / "ckpt"), batch_size=4, device="cpu")
    lm.task_dict = {"t": {"test": [{"images": pictures} for pictures in images]}}
    to_visual = lambda doc: doc["images"]  # noqa: E731

    def request(doc_id: int, **gen_kwargs) -> Instance:
        context = DOCS[doc_id][0] + SHORT
        return Instance("generate_until", (context, gen_kwargs, to_visual, doc_id, "t", "test"), idx=0,
                        metadata={"task": "t", "doc_id": doc_id, "repeats": 1})

    [long] = lm.generate_until([request(0, max_new_tokens=12)])
    stop = long[len(long) // 2:][:2]
    assert stop.strip(), f"answer {long!r} too short to pick a stop string"
    outs = lm.generate_until([request(0, max_new_tokens=12, until=[stop]), request(0, max_new_tokens=2),
                              request(1, max_new_tokens=12), request(0, max_new_tokens=12, temperature=5.0)])
    assert outs[0] == long.split(stop)[0]
    tokens = lambda text: len(model.tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    assert tokens(outs[1]) <= 2 and long.startswith(outs[1])
    assert outs[2] == lm.generate_until([request(1, max_new_tokens=12)])[0]
    # sampling is seeded as mm-eval seeds it (seed and question ids): the same request, the same draw
    assert outs[3] != long, "temperature 5 gave the greedy answer"
    assert lm.generate_until([request(0, max_new_tokens=12, temperature=5.0)]) == [outs[3]]

    with pytest.raises(ValueError, match="beam search"):
        lm.generate_until([request(0, num_beams=3)])
