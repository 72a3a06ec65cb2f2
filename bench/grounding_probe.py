"""Does the model read its images? Measurements on the held-out `synth_vqa` split of `mm-prep synth`.

1. Answers under three image conditions: the real image, a blank one (the world's background colour, no
   objects) and another scene's image (a fixed derangement of the eval images). Accuracy (exact match after
   the eval's answer normalisation: with the ten identical ground truths of synth_vqa it is its VQA accuracy)
   and the fraction of `yes` answers per question type; greedy, 8 new tokens, prompts built by `mm-eval`'s
   own code (`read_synth_vqa` + `eval.runner.Generator`).
2. Linear probes (multinomial logistic regression, L2, LBFGS; 70% of the scenes fit, 30% test, next to the
   majority class): object colour / shape / size / grid position from the projector token and the tower
   patch under each object's centre; the yes/no answer from the LLM's hidden state at the last prompt
   position, per layer (the blank-image run is the text-only control).
3. Attention the last prompt position puts on the image tokens, per layer and question type (eager
   attention, mean over heads), also divided by the uniform share 16 / prompt length.

    .venv/bin/python bench/grounding_probe.py --checkpoint DIR --data SYNTH_DIR [--limit N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from data_prep.synth.world import Scene, WorldConfig, render_png  # noqa: E402
from eval.runner import GenerationSettings, Generator  # noqa: E402
from eval.scoring.normalize import evalai_normalize  # noqa: E402
from eval.scoring.vqa import vqa_question_accuracy  # noqa: E402
from eval.tasks.base import Question  # noqa: E402
from eval.tasks.vqa import SynthVQAOptions, read_synth_vqa  # noqa: E402
from mm.atomic import write_json_atomic  # noqa: E402

CONDITIONS = ("real", "blank", "other_scene")
MAX_NEW_TOKENS = 8
TRAIN_FRACTION = 0.7
ATTRIBUTES = ("color", "shape", "size")


# ----------------------------------------------------------------------------- data
@dataclass
class EvalData:
    """The held-out questions (as `synth_vqa` asks them) with their scenes and images."""

    questions: list[Question]
    scene_of: list[int]
    """Per question, the index of its scene in `scenes` / `images`."""
    scenes: list[dict]
    images: list[Image.Image]
    world: WorldConfig


def world_of(data_dir: Path) -> WorldConfig:
    """The world the synthetic data was drawn from (synth.json, written by `mm-prep synth`)."""
    world = json.loads((data_dir / "synth.json").read_text())["config"]["world"]
    return WorldConfig(**{key: tuple(v) if isinstance(v, list) else v for key, v in world.items()})


def check_renders(scene: dict, image: Image.Image, world: WorldConfig, name: str) -> None:
    """The stored scene graph must draw exactly the stored image (else positions would be wrong)."""
    drawn = Image.open(io.BytesIO(render_png(Scene(scene["objects"], scene["relations"]), world))).convert("RGB")
    if drawn.tobytes() != image.tobytes():
        raise ValueError(f"{name}: eval/scenes.json does not render to this image (synth.json's world differs?)")


def load_eval_data(data_dir: str | Path, limit: int | None, transform) -> EvalData:
    data_dir = Path(data_dir)
    questions = read_synth_vqa(SynthVQAOptions(data=str(data_dir)))[:limit]
    paths = list(dict.fromkeys(q.images[0] for q in questions))
    index = {path: i for i, path in enumerate(paths)}
    stored = json.loads((data_dir / "eval" / "scenes.json").read_text())
    scenes = [stored[str(int(path.stem))] for path in paths]
    images = [transform.open(path) for path in paths]
    world = world_of(data_dir)
    for scene, image, path in zip(scenes, images, paths):
        check_renders(scene, image, world, str(path))
    return EvalData(questions, [index[q.images[0]] for q in questions], scenes, images, world)


# ----------------------------------------------------------------------------- image conditions
def derangement(n: int, seed: int) -> list[int]:
    """Sattolo's algorithm: a random single-cycle permutation, so no index maps to itself."""
    if n < 2:
        raise ValueError(f"another scene's image needs at least 2 scenes, got {n}")
    order, rng = list(range(n)), random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    return order


def condition_images(images: list[Image.Image], background: tuple[int, int, int], seed: int) -> dict[str, list]:
    """Per scene, the image each condition shows in its place."""
    blank = Image.new("RGB", images[0].size, tuple(background))
    other = derangement(len(images), seed)
    return {"real": list(images), "blank": [blank] * len(images), "other_scene": [images[j] for j in other]}


def batch_indices(questions: list[Question], batch_size: int) -> list[list[int]]:
    """Longest prompts first, as `mm-eval` batches them (similar lengths share a batch)."""
    order = sorted(range(len(questions)), key=lambda i: -len(questions[i].prompt))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


# ----------------------------------------------------------------------------- 1. answers
def generate_answers(generator: Generator, data: EvalData, pictures: list, batch_size: int) -> list[str]:
    answers = [""] * len(data.questions)
    for rows in batch_indices(data.questions, batch_size):
        images = generator.prepare([pictures[data.scene_of[i]] for i in rows])
        for i, text in zip(rows, generator.answer([data.questions[i] for i in rows], images)):
            answers[i] = text
    return answers


def type_groups(questions: list[Question]) -> dict[str, list[int]]:
    """Question indices per question type (sorted by name), then "overall"."""
    groups = defaultdict(list)
    for i, question in enumerate(questions):
        groups[question.truth.question_type].append(i)
    return {**dict(sorted(groups.items())), "overall": list(range(len(questions)))}


def answer_summary(questions: list[Question], answers: dict[str, list[str]]) -> dict:
    """Accuracy, `yes` fraction and agreement with the real-image answer, per question type and overall."""
    return {qtype: type_summary([questions[i] for i in rows], {c: [a[i] for i in rows] for c, a in answers.items()})
            for qtype, rows in type_groups(questions).items()}


def type_summary(questions: list[Question], answers: dict[str, list[str]]) -> dict:
    truths = [q.truth.answers[0] for q in questions]
    out = {"n": len(questions), "majority": Counter(truths).most_common(1)[0][1] / len(truths)}
    real = [evalai_normalize(t) for t in answers["real"]]
    for condition, texts in answers.items():
        normalized = [evalai_normalize(t) for t in texts]
        out[condition] = {
            "accuracy": mean(vqa_question_accuracy(q.truth.answers, a) for q, a in zip(questions, normalized)),
            "yes_fraction": mean(a == "yes" for a in normalized),
            "same_as_real": mean(a == b for a, b in zip(normalized, real)),
        }
    return out


def prediction_rows(questions: list[Question], answers: dict[str, list[str]]) -> list[dict]:
    """Every question's answer under each condition, for a closer look."""
    return [{"question_id": q.question_id, "question_type": q.truth.question_type, "truth": q.truth.answers[0],
             **{condition: texts[i] for condition, texts in answers.items()}} for i, q in enumerate(questions)]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# ----------------------------------------------------------------------------- 2. probes
def fit_probe(x: torch.Tensor, labels: list, train: torch.Tensor, l2: float = 1e-3) -> dict:
    """Multinomial logistic regression on standardised features (full-batch LBFGS); test accuracy and the
    majority class of the training rows on the test rows."""
    classes = sorted(set(labels), key=str)
    y = torch.tensor([classes.index(v) for v in labels])
    test = ~train
    result = {"n_train": int(train.sum()), "n_test": int(test.sum()), "classes": len(classes),
              "accuracy": None, "majority": None}
    if not result["n_train"] or not result["n_test"]:
        return result
    x = x.float()
    centre, scale = x[train].mean(0), x[train].std(0, unbiased=False).clamp(min=1e-6)
    x = (x - centre) / scale
    weight = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x[train] @ weight + bias, y[train]) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[test] @ weight + bias).argmax(-1)
    majority = torch.bincount(y[train], minlength=len(classes)).argmax()
    result["accuracy"] = (predicted == y[test]).float().mean().item()
    result["majority"] = (y[test] == majority).float().mean().item()
    return result


def train_scenes(num_scenes: int, seed: int) -> torch.Tensor:
    """A boolean mask of the scenes probes are fitted on (70%, at least one left for testing)."""
    order = torch.randperm(num_scenes, generator=torch.Generator().manual_seed(seed))
    count = min(num_scenes - 1, max(1, round(TRAIN_FRACTION * num_scenes)))
    mask = torch.zeros(num_scenes, dtype=torch.bool)
    mask[order[:count]] = True
    return mask


def pixel_values(transform, pictures: list) -> torch.Tensor:
    return transform.normalize(torch.cat([transform.views(p) for p in pictures]))


@torch.no_grad()
def image_grids(model, pictures: list, batch_size: int) -> dict[str, torch.Tensor]:
    """Tower features (N, patches, D_vision) and projector outputs (N, tokens, D_llm) of every picture; with
    learned grid positions (`projector.grid_position`) also the projector's output before they are added, what
    the image content alone tells of a token's place."""
    transform, grids = model.image_transform_config, {"projector": [], "vision_tower": []}
    content_only = getattr(model.projector, "inner", None)
    for start in range(0, len(pictures), batch_size):
        pixels = pixel_values(transform, pictures[start:start + batch_size])
        features = model.vision_tower(pixels)
        grids["vision_tower"].append(features.float())
        grids["projector"].append(model.projector(features).float())
        if content_only is not None:
            grids.setdefault("projector_without_grid_position", []).append(content_only(features).float())
    return {name: torch.cat(parts) for name, parts in grids.items()}


def object_rows(scenes: list[dict], scale: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, list]]:
    """Each object's scene index, bbox centre (x, y) in tower pixels and attributes."""
    scene_index, centres, attributes = [], [], defaultdict(list)
    for i, scene in enumerate(scenes):
        for obj in scene["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            scene_index.append(i)
            centres.append(((x0 + x1) / 2 * scale, (y0 + y1) / 2 * scale))
            for name in ATTRIBUTES:
                attributes[name].append(obj[name])
    return torch.tensor(scene_index), torch.tensor(centres), attributes


def grid_cell(centres: torch.Tensor, image_size: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of the cell of a side x side grid over the image that holds each centre."""
    cell = image_size / side
    col = (centres[:, 0] / cell).floor().long().clamp(0, side - 1)
    row = (centres[:, 1] / cell).floor().long().clamp(0, side - 1)
    return row, col


def image_probes(model, data: EvalData, train_scene: torch.Tensor, batch_size: int) -> dict:
    """Object attributes and grid position from the projector token / tower patch at each object's centre."""
    size = model.vision_tower.image_size
    scene_index, centres, attributes = object_rows(data.scenes, size / data.world.image_size)
    grids = image_grids(model, data.images, batch_size)
    token_side = math.isqrt(grids["projector"].shape[1])
    token_row, token_col = grid_cell(centres, size, token_side)
    train = train_scene[scene_index]
    out = {}
    for name, grid in grids.items():
        side = math.isqrt(grid.shape[1])
        row, col = grid_cell(centres, size, side)
        features = grid[scene_index, row * side + col]
        targets = {**attributes, "token_col": token_col.tolist(), "token_row": token_row.tolist()}
        if side != token_side:
            targets.update(patch_col=col.tolist(), patch_row=row.tolist())
        out[name] = {"grid": side, "objects": len(scene_index), "dim": features.shape[1],
                     "targets": {t: fit_probe(features, labels, train) for t, labels in targets.items()}}
    return out


# ----------------------------------------------------------------------------- LLM pass (2c, 3)
@contextmanager
def eager_attention(llm):
    """transformers' own switch (`set_attn_implementation`), restored afterwards: attention weights."""
    previous = llm.config._attn_implementation
    llm.set_attn_implementation("eager")
    try:
        yield
    finally:
        llm.set_attn_implementation(previous)


@torch.no_grad()
def last_position_pass(model, generator: Generator, questions: list[Question], pictures: list,
                       batch_size: int) -> dict[str, torch.Tensor]:
    """Per question: hidden state of every layer at the last prompt position (layers+1, n, D), and the
    attention mass that position puts on the image tokens, per layer (n, layers), with its uniform share."""
    states, mass, uniform = [], [], []
    rows_of = batch_indices(questions, batch_size)
    with eager_attention(model.llm):
        for rows in rows_of:
            images = generator.prepare([pictures[i] for i in rows])
            ids, mask = generator.encode([questions[i] for i in rows], None, images.sizes)
            out = model.llm(inputs_embeds=model.embed_inputs(ids, generator.transform.normalize(images.views)),
                            attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            output_hidden_states=True, output_attentions=True, use_cache=False)
            image = (ids == model.image_token_id).float()
            states.append(torch.stack([h[:, -1].float() for h in out.hidden_states]))
            mass.append(torch.stack([(a[:, :, -1].float() * image[:, None]).sum(-1).mean(1) for a in out.attentions], 1))
            uniform.append(image.sum(-1) / mask.sum(-1))
    order = torch.tensor([i for rows in rows_of for i in rows]).argsort()
    return {"states": torch.cat(states, 1)[:, order], "mass": torch.cat(mass)[order], "uniform": torch.cat(uniform)[order]}


def answer_probes(data: EvalData, passes: dict[str, dict], train_scene: torch.Tensor) -> dict:
    """The yes/no answer from the last prompt position's hidden state, per layer, per question type."""
    yes_no = [i for i, q in enumerate(data.questions) if q.truth.answer_type == "yes/no"]
    groups = defaultdict(list)
    for i in yes_no:
        groups[data.questions[i].truth.question_type].append(i)
    groups["all yes/no"] = yes_no
    out = {}
    for qtype, rows in groups.items():
        labels = [data.questions[i].truth.answers[0] for i in rows]
        train = train_scene[torch.tensor([data.scene_of[i] for i in rows], dtype=torch.long)]
        out[qtype] = {condition: [fit_probe(layer[rows], labels, train) for layer in run["states"]]
                      for condition, run in passes.items()}
    return out


def attention_summary(questions: list[Question], run: dict) -> dict:
    """Mean attention mass on the image tokens per layer, and the same divided by their uniform share."""
    ratio = run["mass"] / run["uniform"][:, None]
    return {qtype: {"n": len(rows), "mass": run["mass"][rows].mean(0).tolist(),
                    "ratio_to_uniform": ratio[rows].mean(0).tolist()}
            for qtype, rows in type_groups(questions).items()}


# ----------------------------------------------------------------------------- tables
def number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def answers_table(summary: dict) -> str:
    headers = ["question type", "n", "majority", *(f"acc {c}" for c in CONDITIONS), *(f"yes {c}" for c in CONDITIONS),
               "same blank", "same other"]
    rows = [[qtype, s["n"], number(s["majority"]), *(number(s[c]["accuracy"]) for c in CONDITIONS),
             *(number(s[c]["yes_fraction"]) for c in CONDITIONS), number(s["blank"]["same_as_real"]),
             number(s["other_scene"]["same_as_real"])] for qtype, s in summary.items()]
    return common.format_table(headers, rows)


def image_probe_table(probes: dict) -> str:
    headers = ["features", "grid", "target", "classes", "train", "test", "accuracy", "majority"]
    rows = [[name, p["grid"], target, r["classes"], r["n_train"], r["n_test"], number(r["accuracy"]), number(r["majority"])]
            for name, p in probes.items() for target, r in p["targets"].items()]
    return common.format_table(headers, rows)


def answer_probe_table(probes: dict) -> str:
    layers = len(next(iter(next(iter(probes.values())).values())))
    headers = ["question type", "image", "train", "test", "majority", *(f"L{i}" for i in range(layers))]
    rows = [[qtype, condition, runs[0]["n_train"], runs[0]["n_test"], number(runs[0]["majority"]),
             *(number(r["accuracy"]) for r in runs)]
            for qtype, by_condition in probes.items() for condition, runs in by_condition.items()]
    return common.format_table(headers, rows)


def attention_table(summary: dict) -> str:
    layers = len(next(iter(summary.values()))["mass"])
    headers = ["question type", "n", *(f"mass L{i + 1}" for i in range(layers)), *(f"/unif L{i + 1}" for i in range(layers))]
    rows = [[qtype, s["n"], *map(number, s["mass"]), *map(number, s["ratio_to_uniform"])] for qtype, s in summary.items()]
    return common.format_table(headers, rows)


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="exported checkpoint directory (mm.load_pretrained)")
    parser.add_argument("--data", required=True, help="output folder of `mm-prep synth`")
    parser.add_argument("--limit", type=int, default=None, help="first N eval questions only")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the derangement and the probe split")
    return parser.parse_args(argv)


def load_model(path: str):
    import mm

    return mm.load_pretrained(path).to("cpu").eval()


def run_probe(model, data: EvalData, batch_size: int, seed: int) -> dict:
    dtype = next(model.parameters()).dtype
    settings = GenerationSettings(batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS,
                                  template=model.config.chat_template, image_workers=0)
    generator = Generator(model, settings, dtype)
    conditions = condition_images(data.images, data.world.background, seed)
    answers = {c: generate_answers(generator, data, pictures, batch_size) for c, pictures in conditions.items()}
    per_question = {c: [conditions[c][s] for s in data.scene_of] for c in ("real", "blank")}
    passes = {c: last_position_pass(model, generator, data.questions, pictures, batch_size)
              for c, pictures in per_question.items()}
    train_scene = train_scenes(len(data.scenes), seed)
    return {
        "answers": answer_summary(data.questions, answers),
        "predictions": prediction_rows(data.questions, answers),
        "image_probes": image_probes(model, data, train_scene, batch_size),
        "answer_probes": answer_probes(data, passes, train_scene),
        "attention": attention_summary(data.questions, passes["real"]),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    model = load_model(args.checkpoint)
    data = load_eval_data(args.data, args.limit, model.image_transform_config)
    results = run_probe(model, data, args.batch_size, args.seed)
    results.update(checkpoint=str(Path(args.checkpoint).resolve()), data=str(Path(args.data).resolve()),
                   questions=len(data.questions), scenes=len(data.scenes), seed=args.seed,
                   image_tokens=model.tokens_per_image, seconds=round(time.perf_counter() - start, 1))
    print(f"{results['questions']} questions on {results['scenes']} scenes, {results['seconds']} s")
    print("\n1. Answers per question type and image condition (accuracy, fraction 'yes', same answer as real)")
    print(answers_table(results["answers"]))
    print("\n2a/b. Linear probes on the token / patch at each object's centre (test accuracy vs majority class)")
    print(image_probe_table(results["image_probes"]))
    print("\n2c. Linear probes of the yes/no answer on the LLM's last prompt position (L0 = embeddings)")
    print(answer_probe_table(results["answer_probes"]))
    print(f"\n3. Attention of the last prompt position on the {model.tokens_per_image} image tokens "
          "(mean over heads; /unif = mass / (image tokens / prompt length))")
    print(attention_table(results["attention"]))
    if args.out:
        write_json_atomic(args.out, results)
    return results


if __name__ == "__main__":
    main()
