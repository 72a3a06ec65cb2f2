"""Where does grounding fail: the eyes (tower), the link (image tokens), or the language model? Three controls,
each a short in-process training run on data drawn fresh from the synthetic world (or random words) every step.

- `answer`: a stage export trained on one-question samples of the chosen `synth` programs, the question about
  the image (`--input image`) or about the scene's one-sentence description given as text in its place
  (`--input caption`: the same facts, no vision). `--prefix-attention` lets every prompt position (image tokens
  included) see the whole prompt, as PaliGemma's prefix-LM does; `--tower FILE` swaps in a tower's weights
  (e.g. one the `tower` control trained). Teacher-forced accuracy per program (every answer token and the
  end of turn right) on held-out questions of fresh scenes, every `--every` steps.
- `tower`: the vision tower alone, a linear head on the maximum over its output tokens, trained to name the
  shape and size of the one object of a scene: can the tower learn them at all?
- `language`: the LLM alone on generic in-context tasks over random single-token words of the tokenizer (copy a
  list, recall the word after a given one, is "a b" one of the listed pairs, is a word before another): can
  it learn to match words of a question to words before it? `induction` (a random list said twice, every
  answer token trained) is there to grow the heads that copy what followed a word before; it is not scored.

    .venv/bin/python bench/grounding_controls.py answer --checkpoint demo_out/stage1/export --input caption \
        --max-objects 1 --programs attribute_color,attribute_shape,attribute_size,exist --steps 600 --out a.json
    .venv/bin/python bench/grounding_controls.py tower --checkpoint demo_out/stage1/export --save tower.safetensors
    .venv/bin/python bench/grounding_controls.py language --checkpoint demo_out/stage1/export --steps 1500
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data_prep.synth.programs import VQA_PROGRAMS, ask, description  # noqa: E402
from data_prep.synth.world import WorldConfig, render_png, sample_scene  # noqa: E402
from mm.atomic import write_json_atomic  # noqa: E402
from mm.chat import IGNORE_INDEX, IMAGE_TOKEN, encode_conversation  # noqa: E402
from mm.data.batching import collate  # noqa: E402
from mm.data.samples import Sample  # noqa: E402
from mm.loading import load_pretrained  # noqa: E402

EVAL_SEED = 10_007


# ----------------------------------------------------------------------------- shared pieces
def prefix_attention_mask(mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T): positions before a row's first labelled token see each other both ways, the
    rest is causal; padding is seen by no one (each position sees itself, so no softmax row is empty)."""
    batch, length = mask.shape
    labelled = labels != IGNORE_INDEX
    first_answer = torch.where(labelled.any(1), labelled.float().argmax(1), torch.full((batch,), length))
    in_prompt = torch.arange(length)[None, :] < first_answer[:, None]
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None]
    allowed = (causal | (in_prompt[:, :, None] & in_prompt[:, None, :])) & mask.bool()[:, None, :]
    return (allowed | torch.eye(length, dtype=torch.bool)[None])[:, None]


def teacher_forced_correct(logits: torch.Tensor, labels: torch.Tensor) -> list[bool]:
    """Per row: every labelled token is the argmax of the logits before it."""
    predicted, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
    return ((predicted == targets) | (targets == IGNORE_INDEX)).all(1).tolist()


def cosine_schedule(optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """5% linear warmup, then cosine to zero (the shape of the training recipes' schedule)."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )


def train(parameters, steps: int, lr: float, loss_of_step, evaluate, every: int) -> list[dict]:
    """AdamW (no weight decay), gradients clipped at 1; `evaluate()` every `every` steps and at the end."""
    parameters = [p for p in parameters if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule, history, start = cosine_schedule(optimizer, steps), [], time.time()
    for step in range(1, steps + 1):
        loss = loss_of_step(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % every == 0 or step == steps:
            history.append({"step": step, "seconds": round(time.time() - start, 1), "loss": round(loss.item(), 4),
                            **evaluate()})
            print(json.dumps(history[-1]), flush=True)
    return history


def scene_image(scene, world: WorldConfig) -> Image.Image:
    return Image.open(io.BytesIO(render_png(scene, world))).convert("RGB")


def system_turn(system: str | None) -> list[dict]:
    """A leading system turn: the template's own system message (vicuna_v1's 29 tokens) is replaced by it."""
    return [{"from": "system", "value": system}] if system else []


def percent(hits: dict[str, int], totals: dict[str, int]) -> dict[str, float]:
    scores = {name: round(100 * hits.get(name, 0) / totals[name], 1) for name in sorted(totals)}
    scores["overall"] = round(100 * sum(hits.values()) / sum(totals.values()), 1)
    return scores


# ----------------------------------------------------------------------------- answer control
class QuestionSamples:
    """Fresh scenes with one question each, encoded for the model: the image, or its description as text."""

    def __init__(self, vlm, world: WorldConfig, programs: tuple[str, ...], use_caption: bool, system: str | None):
        self.vlm, self.world, self.programs, self.use_caption = vlm, world, programs, use_caption
        self.opening = system_turn(system)
        self.transform = vlm.make_image_transform()

    def draw(self, rng: random.Random) -> tuple[Sample, str]:
        """A sample (uint8 pixels, or none for the caption input) and its question's program."""
        scene = sample_scene(rng, self.world)
        qa = ask(scene, rng, self.world, self.programs)
        if qa is None:
            raise ValueError(f"no question of {self.programs} fits the scene {scene.to_json()}")
        context = description(scene, self.world) if self.use_caption else IMAGE_TOKEN
        conversation = [*self.opening, {"from": "human", "value": f"{context}\n{qa.question}"},
                        {"from": "gpt", "value": qa.answer}]  # fmt: skip
        encoded = encode_conversation(conversation, self.vlm.tokenizer, self.vlm.config.chat_template,
                                      tokens_per_image=self.vlm.tokens_per_image,
                                      num_images=0 if self.use_caption else 1)  # fmt: skip
        images = []
        if not self.use_caption:
            images = [self.transform.views(scene_image(scene, self.world))]
        return Sample(encoded.input_ids, encoded.labels, images), qa.program

    def batch(self, drawn: list[tuple[Sample, str]]) -> dict:
        batch = collate([sample for sample, _ in drawn], self.vlm.tokenizer.pad_token_id or 0)
        if batch["pixel_values"] is not None:
            batch["pixel_values"] = self.transform.normalize(batch["pixel_values"])
        return batch


def run_answer(args) -> dict:
    torch.manual_seed(args.seed)
    vlm = load_pretrained(args.checkpoint).train()
    if args.tower:
        try:
            vlm.vision_tower.load_state_dict(load_file(args.tower))
        except (OSError, RuntimeError, SafetensorError) as error:
            raise SystemExit(f"--tower {args.tower}: not a tower of this checkpoint's architecture ({error})") from None
    vlm.set_trainable(vision=True, projector=True, llm=True)
    world = WorldConfig(min_objects=1, max_objects=args.max_objects)
    data = QuestionSamples(vlm, world, tuple(args.programs.split(",")), args.input == "caption", args.system)
    eval_rng = random.Random(EVAL_SEED)
    held_out = [data.draw(eval_rng) for _ in range(args.num_eval)]

    def forward(batch: dict, with_labels: bool):
        mask = batch["attention_mask"]
        if args.prefix_attention:
            mask = prefix_attention_mask(mask, batch["labels"])
        return vlm(batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=mask,
                   labels=batch["labels"] if with_labels else None, return_logits=not with_labels)  # fmt: skip

    @torch.no_grad()
    def evaluate() -> dict:
        vlm.eval()
        hits, totals = {}, {}
        for start in range(0, len(held_out), 64):
            chunk = held_out[start:start + 64]
            batch = data.batch(chunk)
            for (_, program), correct in zip(chunk, teacher_forced_correct(forward(batch, False).logits, batch["labels"])):
                hits[program] = hits.get(program, 0) + correct
                totals[program] = totals.get(program, 0) + 1
        vlm.train()
        return percent(hits, totals)

    rng = random.Random(args.seed)
    history = train(vlm.parameters(), args.steps, args.lr,
                    lambda step: forward(data.batch([data.draw(rng) for _ in range(args.batch_size)]), True).loss,
                    evaluate, args.every)  # fmt: skip
    return {"history": history}


# ----------------------------------------------------------------------------- tower control
def run_tower(args) -> dict:
    torch.manual_seed(args.seed)
    vlm = load_pretrained(args.checkpoint)
    tower, transform = vlm.vision_tower.train().requires_grad_(True), vlm.make_image_transform()
    world = WorldConfig(min_objects=1, max_objects=1)
    shapes, sizes = {s: i for i, s in enumerate(world.shapes)}, {s: i for i, s in enumerate(world.sizes)}
    with torch.no_grad():
        width = tower(torch.zeros(1, 3, tower.image_size, tower.image_size)).shape[-1]
    head = torch.nn.Linear(width, len(shapes) + len(sizes))

    def draw(rng: random.Random, count: int):
        scenes = [sample_scene(rng, world) for _ in range(count)]
        pixels = [transform.views(scene_image(s, world)) for s in scenes]
        return (transform.normalize(torch.cat(pixels)), torch.tensor([shapes[s.objects[0]["shape"]] for s in scenes]),
                torch.tensor([sizes[s.objects[0]["size"]] for s in scenes]))  # fmt: skip

    def logits(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = head(tower(pixels).max(dim=1).values)
        return out[:, : len(shapes)], out[:, len(shapes):]

    held_out, rng = draw(random.Random(EVAL_SEED), args.num_eval), random.Random(args.seed)

    @torch.no_grad()
    def evaluate() -> dict:
        tower.eval()
        shape, size = logits(held_out[0])
        tower.train()
        return {"shape": round(100 * (shape.argmax(1) == held_out[1]).float().mean().item(), 1),
                "size": round(100 * (size.argmax(1) == held_out[2]).float().mean().item(), 1)}

    def loss_of_step(step: int) -> torch.Tensor:
        pixels, shape_truth, size_truth = draw(rng, args.batch_size)
        shape, size = logits(pixels)
        return F.cross_entropy(shape, shape_truth) + F.cross_entropy(size, size_truth)

    history = train([*tower.parameters(), *head.parameters()], args.steps, args.lr, loss_of_step, evaluate, args.every)
    if args.save:
        save_file({name: tensor.contiguous() for name, tensor in tower.state_dict().items()}, args.save)
    return {"history": history}


# ----------------------------------------------------------------------------- language control
def word_list(tokenizer) -> list[str]:
    """Words that are one token of their own after a space (the byte-level BPE's 'Ġword')."""
    return sorted(w[1:] for w in tokenizer.get_vocab() if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 3)


def pairs_task(rng: random.Random, words: list[str]) -> tuple[str, str, str]:
    """'w1 w2, w3 w4' / 'Is there a a b?': yes iff 'a b' is a listed pair (the shape of 'a red circle')."""
    count = rng.randint(1, 4)
    drawn = rng.sample(words, 2 * count + 2)
    pairs = [(drawn[2 * i], drawn[2 * i + 1]) for i in range(count)]
    if rng.random() < 0.5:
        first, second = rng.choice(pairs)
    elif count > 1 and rng.random() < 0.5:  # both words listed, in different pairs
        i, j = rng.sample(range(count), 2)
        first, second = pairs[i][0], pairs[j][1]
    else:  # one word listed, one not
        first, second = (rng.choice(pairs)[0], drawn[-1]) if rng.random() < 0.5 else (drawn[-2], rng.choice(pairs)[1])
    answer = "yes" if (first, second) in pairs else "no"
    return ", ".join(f"{a} {b}" for a, b in pairs), f"Is there a {first} {second}?", answer


def recall_task(rng: random.Random, words: list[str]) -> tuple[str, str, str]:
    count = rng.randint(1, 4)
    drawn = rng.sample(words, 2 * count)
    pairs = [(drawn[2 * i], drawn[2 * i + 1]) for i in range(count)]
    first, second = rng.choice(pairs)
    return ", ".join(f"{a} {b}" for a, b in pairs), f"Which word follows {first}?", second


def order_task(rng: random.Random, words: list[str]) -> tuple[str, str, str]:
    drawn = rng.sample(words, rng.randint(2, 5))
    i, j = rng.sample(range(len(drawn)), 2)
    return " ".join(drawn), f"Is {drawn[i]} before {drawn[j]}?", "yes" if i < j else "no"


def copy_task(rng: random.Random, words: list[str]) -> tuple[str, str, str]:
    drawn = rng.sample(words, rng.randint(2, 6))
    return " ".join(drawn), "Repeat the words.", " ".join(drawn)


def induction_task(rng: random.Random, words: list[str]) -> tuple[str, str, str]:
    """A list said twice: the answer's second half is learnable only by finding what followed the current word
    the first time (an induction head); many such targets per sample."""
    drawn = rng.choices(words, k=rng.randint(8, 16))
    return "", "Say a list twice.", " ".join(drawn + drawn)


LANGUAGE_TASKS = {"induction": induction_task, "copy": copy_task, "recall": recall_task, "pairs": pairs_task, "order": order_task}


def run_language(args) -> dict:
    torch.manual_seed(args.seed)
    vlm = load_pretrained(args.checkpoint).train().set_trainable(vision=False, projector=False, llm=True)
    words, tasks = word_list(vlm.tokenizer), args.tasks.split(",")
    unknown = [t for t in tasks if t not in LANGUAGE_TASKS]
    if unknown:
        raise SystemExit(f"unknown language task(s) {unknown}; valid: {', '.join(LANGUAGE_TASKS)}")

    def encode(task: str, rng: random.Random) -> Sample:
        context, question, answer = LANGUAGE_TASKS[task](rng, words)
        prompt = f"{context}\n{question}" if context else question
        conversation = [*system_turn(args.system), {"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
        encoded = encode_conversation(conversation, vlm.tokenizer, vlm.config.chat_template,
                                      tokens_per_image=vlm.tokens_per_image, num_images=0)  # fmt: skip
        return Sample(encoded.input_ids, encoded.labels, [])

    pad = vlm.tokenizer.pad_token_id or 0
    scored = [t for t in tasks if t != "induction"]  # half of its answer is random: trained on, not scored
    held_out = {t: collate([encode(t, random.Random(EVAL_SEED + i)) for i in range(args.num_eval)], pad) for t in scored}

    @torch.no_grad()
    def evaluate() -> dict:
        vlm.eval()
        scores = {}
        for task, batch in held_out.items():
            logits = vlm(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            correct = teacher_forced_correct(logits, batch["labels"])
            scores[task] = round(100 * sum(correct) / len(correct), 1)
        vlm.train()
        return scores

    rng = random.Random(args.seed)

    def loss_of_step(step: int) -> torch.Tensor:
        batch = collate([encode(rng.choice(tasks), rng) for _ in range(args.batch_size)], pad)
        return vlm(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                   return_logits=False).loss  # fmt: skip

    history = train(vlm.parameters(), args.steps, args.lr, loss_of_step, evaluate, args.every)
    if args.save:
        vlm.save_pretrained(args.save, overwrite=True)
    return {"history": history}


# ----------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    controls = parser.add_subparsers(dest="control", required=True)
    for name in ("answer", "tower", "language"):
        sub = controls.add_parser(name)
        sub.add_argument("--checkpoint", required=True, help="an mm export (e.g. demo_out/stage1/export)")
        sub.add_argument("--steps", type=int, default=600)
        sub.add_argument("--batch-size", type=int, default=32)
        sub.add_argument("--lr", type=float, default=1e-3)
        sub.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
        sub.add_argument("--num-eval", type=int, default=600, help="held-out samples (per task for language)")
        sub.add_argument("--seed", type=int, default=0)
        if name != "tower":
            sub.add_argument("--system", help="a system message instead of the chat template's own")
        sub.add_argument("--out", help="write the settings and the accuracy curve here (JSON)")
        sub.add_argument("--save", help="tower: its weights (safetensors); language: the whole export, after training")
    answer = controls.choices["answer"]
    answer.add_argument("--input", choices=("image", "caption"), default="image")
    answer.add_argument("--programs", default=",".join(VQA_PROGRAMS), help="synth question programs, comma-separated")
    answer.add_argument("--max-objects", type=int, default=2)
    answer.add_argument("--prefix-attention", action="store_true")
    answer.add_argument("--tower", help="a tower's weights (safetensors, as `tower --save` writes) instead of the checkpoint's")
    controls.choices["language"].add_argument("--tasks", default=",".join(LANGUAGE_TASKS))
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = {"tower": run_tower, "language": run_language, "answer": run_answer}[args.control](args)
    result = {"control": args.control, "settings": {k: v for k, v in vars(args).items() if k != "control"}, **result}
    if args.out:
        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
