"""Batched greedy generation over a task's questions, appending predictions as they are produced."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from eval.distributed import Ranks, barrier, existing_prediction_files, gather, part_file, shard
from eval.predictions import append_predictions, id_key, parse_predictions, recover_partial
from eval.tasks.base import Question, TaskDataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated."""

    batch_size: int = 16
    """Questions per generate() call (left-padded)."""
    max_new_tokens: int = 128
    """Longest answer, in tokens (LLaVA-1.5's evaluation default)."""
    template: str = "vicuna_v1"
    """Chat template used to build prompts."""
    image_workers: int = 4
    """Threads decoding the next batch's images while the current one generates."""
    temperature: float = 0.0
    """0: greedy (the benchmarks' protocol); above 0: sampling, e.g. the N responses of PIF-N-K."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int = 0
    """Seed of sampling; each batch draws from a stream named by the seed and its question ids, so a
    command repeated gives the same answers (another batch size, rank count or a resume forms other
    batches, hence other draws)."""

    @property
    def sampling(self) -> dict | None:
        """The sampling settings, or None when greedy (what run.json records and a resume must match)."""
        return None if self.temperature == 0 else {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


def conversation(question: Question, image_token: str, earlier_answers: Sequence[str] = ()) -> list[dict]:
    """LLaVA's question: one placeholder line per image, then the prompt; a later turn replays the earlier
    prompts with the model's own answers to them."""
    if len(earlier_answers) != len(question.history):
        raise ValueError(f"question {question.question_id}: {len(question.history)} earlier turns, "
                         f"{len(earlier_answers)} answers")
    prompts = [prompt for _, prompt in question.history] + [question.prompt]
    turns = [{"from": "human", "value": f"{image_token}\n" * len(question.images) + prompts[0]}]
    for answer, prompt in zip(earlier_answers, prompts[1:]):
        turns += [{"from": "gpt", "value": answer}, {"from": "human", "value": prompt}]
    return turns


def check_images(questions: Sequence[Question]) -> None:
    """Fail before generating if an image file is missing, naming it and the options that locate it."""
    for question in questions:
        for image in question.images:
            if isinstance(image, Path) and not image.is_file():
                raise TaskDataError(f"image not found: {image} (question {question.question_id}; "
                                    "check --image-root / --image-pattern or the data folder)")


def placeholders(turns: Sequence[dict], image_token: str) -> int:
    return sum(turn["value"].count(image_token) for turn in turns)


class ImageInputs(NamedTuple):
    """A batch's images as the model takes them."""

    views: torch.Tensor
    """uint8 (all views, 3, S, S): one per image, or anyres' base view and tiles, in placeholder order."""
    sizes: list[tuple[int, int]]
    """Each image's (height, width) as decoded."""


class Generator:
    """Turns batches of questions into answer texts with one model."""

    def __init__(self, model, settings: GenerationSettings, dtype: torch.dtype):
        from mm.chat import stop_token_ids

        self.model, self.settings, self.dtype = model, settings, dtype
        self.tokenizer = model.tokenizer
        self.transform = model.image_transform_config
        self.stop_ids = stop_token_ids(self.tokenizer, settings.template)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    def load_images(self, batch: Sequence[Question]) -> ImageInputs | None:
        """Every image's views (uint8, placeholder order) and sizes, or None for a text-only batch."""
        pictures = []
        for question in batch:
            for image in question.images:
                try:
                    pictures.append(self.transform.open(image))
                    pictures[-1].load()  # decode errors here, where the file is named
                except (OSError, ValueError, Image.DecompressionBombError) as error:
                    name = image if isinstance(image, Path) else f"embedded image of question {question.question_id}"
                    raise TaskDataError(f"cannot decode {name}: {error}") from None
        return self.prepare(pictures)

    def prepare(self, pictures: Sequence[Image.Image]) -> ImageInputs | None:
        """Decoded images -> their views and sizes (None without images)."""
        if not pictures:
            return None
        return ImageInputs(torch.cat([self.transform.views(picture) for picture in pictures]),
                           [(picture.height, picture.width) for picture in pictures])

    def encode(self, batch: Sequence[Question], earlier_answers: Mapping[str, str] | None = None,
               image_sizes: Sequence[tuple[int, int]] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input ids and attention mask; `earlier_answers` (by question id) fills the
        model's turns of multi-turn questions; `image_sizes` (the batch's images, in order) set each
        image's placeholder count where it depends on its size (anyres)."""
        from mm.chat import encode_prompt

        image_token = self.model.config.image_token
        earlier_answers = earlier_answers or {}
        conversations = [conversation(q, image_token, [earlier_answers[id_key(i)] for i, _ in q.history]) for q in batch]
        counts = iter(self.model.image_tokens.counts(image_sizes))  # the batch's images in placeholder order
        rows = [encode_prompt(turns, self.tokenizer, self.settings.template, image_token=image_token,
                              tokens_per_image=[next(counts) for _ in range(placeholders(turns, image_token))])
                for turns in conversations]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        return ids, mask

    def sampling_arguments(self, batch: Sequence[Question], device) -> dict:
        """generate()'s sampling keywords: none when greedy, else a generator seeded by the batch's ids."""
        settings = self.settings
        if settings.temperature == 0:
            return {"do_sample": False}
        name = f"{settings.seed}:" + ",".join(id_key(q.question_id) for q in batch)
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        generator = torch.Generator(device=device).manual_seed(seed)
        return {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "generator": generator}

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Text of each row up to its first stop token, stripped like LLaVA's outputs."""
        texts = []
        for row in tokens.tolist():
            cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    @torch.inference_mode()
    def answer(self, batch: Sequence[Question], images: ImageInputs | None,
               earlier_answers: Mapping[str, str] | None = None) -> list[str]:
        device = self.model.device
        ids, mask = self.encode(batch, earlier_answers, images.sizes if images else ())
        pixel_values = None if images is None else self.transform.normalize(images.views.to(device), self.dtype)
        tokens = self.model.generate(ids.to(device), mask.to(device), pixel_values,
                                     max_new_tokens=self.settings.max_new_tokens, eos_token_id=self.stop_ids,
                                     image_sizes=images.sizes if images else None,
                                     **self.sampling_arguments(batch, device))
        return self.decode(tokens.cpu())


def batches(questions: Sequence[Question], size: int) -> Iterator[list[Question]]:
    for start in range(0, len(questions), size):
        yield list(questions[start:start + size])


def pending_questions(questions: Sequence[Question], out_dir: Path, ranks: Ranks) -> list[Question]:
    """This rank's share of the questions not yet answered by any earlier (possibly crashed) run."""
    recover_partial(part_file(out_dir, ranks))  # each rank repairs only its own file
    barrier()
    done: set[str] = set()
    for path in existing_prediction_files(out_dir):
        done |= recover_partial(path, truncate=False)
    barrier()  # nobody appends before every rank has the same view of what is done
    todo = [q for q in questions if id_key(q.question_id) not in done]
    # Longest prompts first: similar lengths share a batch (less padding) and memory peaks early.
    todo.sort(key=lambda q: (-len(q.prompt), id_key(q.question_id)))
    return shard(todo, ranks.rank, ranks.world_size)


def answers_so_far(out_dir: Path) -> dict[str, str]:
    """Text by question id over the predictions file and every rank's part file (first answer per id)."""
    answers: dict[str, str] = {}
    for path in existing_prediction_files(out_dir):
        for record in parse_predictions(path, torn_tail=True)[0]:
            answers.setdefault(id_key(record["question_id"]), record["text"])
    return answers


def conversation_rounds(questions: Sequence[Question]) -> list[list[Question]]:
    """Questions grouped by how many earlier turns they have: round k needs the answers of round k - 1."""
    depths = sorted({len(q.history) for q in questions})
    return [[q for q in questions if len(q.history) == depth] for depth in depths]


def generate_predictions(generator: Generator, questions: Sequence[Question], out_dir: Path, ranks: Ranks,
                         model_id: str, task_name: str) -> dict:
    """Answer this rank's pending questions round by round (later turns after the earlier ones everywhere),
    appending each batch to its file; rank 0 gathers. Returns timings for the run record."""
    generated, seconds = 0, 0.0
    for round_questions in conversation_rounds(questions):
        earlier = answers_so_far(out_dir) if round_questions[0].history else {}
        count, spent = _generate_round(generator, round_questions, earlier, out_dir, ranks, model_id, task_name)
        generated, seconds = generated + count, seconds + spent
        barrier()  # every rank's answers of this round are on disk before the next round reads them
    # Part files exist under torchrun, or when an interrupted multi-rank run is resumed by fewer ranks.
    if ranks.rank == 0 and list(out_dir.glob("predictions.rank*.jsonl")):
        gather(out_dir)
    barrier()
    return {"generated": generated, "generation_seconds": round(seconds, 3),
            "samples_per_second": round(generated / seconds, 3) if seconds > 0 and generated else None}


def _generate_round(generator: Generator, questions: Sequence[Question], earlier: Mapping[str, str], out_dir: Path,
                    ranks: Ranks, model_id: str, task_name: str) -> tuple[int, float]:
    mine = pending_questions(questions, out_dir, ranks)
    check_images(mine)
    unanswered = sorted({str(i) for q in mine for i, _ in q.history if id_key(i) not in earlier})
    if unanswered:
        raise TaskDataError(f"earlier turns without an answer: {', '.join(unanswered[:5])} (is --limit cutting a "
                            "conversation? the predictions file lacks them)")
    target = part_file(out_dir, ranks)
    target.touch()
    start = time.perf_counter()
    planned = list(batches(mine, generator.settings.batch_size))
    # a bar on a terminal; logs (not a terminal) get the line every tenth of the batches below instead
    bar = tqdm(total=len(mine), unit="question", desc=task_name, file=sys.stderr,
               disable=ranks.rank != 0 or not sys.stderr.isatty())
    with bar, ThreadPoolExecutor(max_workers=max(1, generator.settings.image_workers)) as pool:
        upcoming = pool.submit(generator.load_images, planned[0]) if planned else None
        for index, batch in enumerate(planned):
            pixels = upcoming.result()
            if index + 1 < len(planned):
                upcoming = pool.submit(generator.load_images, planned[index + 1])
            texts = generator.answer(batch, pixels, earlier)
            append_predictions(target, (
                {"question_id": q.question_id, "prompt": q.prompt, "text": text, "model_id": model_id,
                 "metadata": {"task": task_name}} for q, text in zip(batch, texts)))
            bar.update(len(batch))
            if (index + 1) % max(1, len(planned) // 10) == 0 or index + 1 == len(planned):
                log.info("rank %d: %d/%d batches", ranks.rank, index + 1, len(planned))
    return len(mine), time.perf_counter() - start
