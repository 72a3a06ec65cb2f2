"""Rank sharding and gathering of prediction part files (torchrun: WORLD_SIZE / RANK)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

from eval.predictions import id_key, parse_predictions
from mm.atomic import write_text_atomic

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the evaluation processes."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> "Ranks":
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Every `world_size`-th item from `rank`: each item lands on exactly one rank, and striding a
    length-sorted list gives every rank a similar mix of long and short prompts."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    return list(items[rank::world_size])


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_process_group(ranks: Ranks, device: str) -> None:
    """Join torchrun's group (gloo on CPU, nccl on GPU) so ranks can wait for each other."""
    import torch.distributed as dist

    if ranks.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def part_file(out_dir: Path, ranks: Ranks) -> Path:
    """Where this rank appends: the predictions file itself when alone, a part file otherwise."""
    if ranks.world_size == 1:
        return out_dir / "predictions.jsonl"
    return out_dir / f"predictions.rank{ranks.rank}.jsonl"


def existing_prediction_files(out_dir: Path) -> list[Path]:
    """The merged file and every part file (parts of an earlier run with another world size too)."""
    return [p for p in [out_dir / "predictions.jsonl", *sorted(out_dir.glob("predictions.rank*.jsonl"))] if p.exists()]


def gather(out_dir: Path) -> int:
    """Merge the predictions file and all part files into one, first answer per id kept; part files are
    removed after the merged file is atomically in place. Returns the number of predictions."""
    seen: set[str] = set()
    lines: list[str] = []
    sources = existing_prediction_files(out_dir)
    for path in sources:
        # A torn tail of a crashed rank is left out: that question counts as missing when scored.
        for record in parse_predictions(path, torn_tail=True)[0]:
            key = id_key(record["question_id"])
            if key not in seen:
                seen.add(key)
                lines.append(json.dumps(record, ensure_ascii=False))
    write_text_atomic(out_dir / "predictions.jsonl", "".join(line + "\n" for line in lines))
    for path in sources:
        if path.name != "predictions.jsonl":
            path.unlink()
    return len(lines)
