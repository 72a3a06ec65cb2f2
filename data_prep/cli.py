"""`mm-prep`: llava | vqa | pref | synth | inspect | select."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data_prep.convert import ConversionInterrupted, ConvertOptions, ConvertResult, OutputDirError, convert, format_summary
from data_prep.images import CHECK_MODES
from data_prep.records import SHORT_ANSWER_SUFFIX
from data_prep.score import add_score_command
from mm.cli_errors import BadInput, OneLineParser, run_cli, whole_number_at_least

MAX_SYNTH_IMAGE_SIZE = 4096
"""Largest --image-size synth draws (at 4x supersampling a 4096 px scene is already 800 MB of pixels)."""


def _input_file(path: str, option: str) -> None:
    """Refuse an input file that cannot be read, naming the option, before any work is done."""
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise BadInput(f"{option} {path}: {error.strerror or error}") from None


def _image_root(path: str) -> None:
    """A root that is a file is a mistake; a missing one is not refused (text-only data and embedded images need
    none; records whose images it should hold are counted as missing_image)."""
    if os.path.lexists(path) and not Path(path).is_dir():
        raise BadInput(f"--image-root {path}: not a directory")


def _default_workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(8, os.cpu_count() or 1))


def _add_shard_options(parser: argparse.ArgumentParser, samples_per_shard: int = 1000) -> None:
    group = parser.add_argument_group("shards")
    group.add_argument("--out", required=True, help="output directory")
    group.add_argument("--seed", type=int, default=0, help="seed of the shuffle (and of generation for synth)")
    group.add_argument("--samples-per-shard", type=whole_number_at_least(1), default=samples_per_shard, help="most samples per shard")
    group.add_argument("--max-shard-bytes", type=whole_number_at_least(1), default=1_000_000_000, help="most bytes per shard (estimated)")
    group.add_argument("--workers", type=whole_number_at_least(1), default=_default_workers(), help="processes writing shards (one shard each)")
    group.add_argument("--max-image-side", type=whole_number_at_least(1), default=None,
                       help="re-encode images whose longer side exceeds this (default: copy bytes verbatim)")
    group.add_argument("--check", choices=CHECK_MODES, default="fast",
                       help="image check: fast (headers + integrity markers) or full (decode every image)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace a different earlier conversion in --out (only the files it recorded as its own; "
                            "a folder holding other shards is refused)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_image_root(parser: argparse.ArgumentParser, **options) -> None:
    parser.add_argument("--image-root", **options)
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="read image paths that resolve outside --image-root (.., absolute paths, symlinks); "
                             "by default such records are rejected as image_outside_root")  # fmt: skip


def _convert_options(args: argparse.Namespace, out_dir: str | None = None) -> ConvertOptions:
    return ConvertOptions(
        out_dir=out_dir or args.out, seed=args.seed, samples_per_shard=args.samples_per_shard,
        max_shard_bytes=args.max_shard_bytes, workers=args.workers, max_image_side=args.max_image_side,
        check=args.check, overwrite=args.overwrite, progress=not args.no_progress, command=args.command_line,
    )  # fmt: skip


def _report(result: ConvertResult, label: str = "") -> None:
    print((f"[{label}] " if label else "") + format_summary(result))


def cmd_llava(args: argparse.Namespace) -> None:
    from data_prep.llava import load_llava

    _input_file(args.annotations, "--annotations")
    _image_root(args.image_root)
    source = args.source or Path(args.annotations).stem
    samples, rejections, total = load_llava(args.annotations, args.image_root, source, args.source_by_image_dir,
                                            allow_outside_root=args.allow_outside_root)  # fmt: skip
    info = {"annotations": str(args.annotations), "image_root": str(args.image_root),
            "allow_outside_root": args.allow_outside_root}  # fmt: skip
    _report(convert(samples, rejections, _convert_options(args), num_input_records=total, source=source, input_info=info))


def cmd_vqa(args: argparse.Namespace) -> None:
    from data_prep.vqa import load_prompt_pool, load_vqa

    for path, option in ((args.questions, "--questions"), (args.annotations, "--annotations"), (args.prompt_pool, "--prompt-pool")):
        if path is not None:
            _input_file(path, option)
    _image_root(args.image_root)
    pool = load_prompt_pool(args.prompt_pool) if args.prompt_pool else [args.prompt_suffix]
    samples, rejections, total = load_vqa(
        args.questions, args.annotations, args.image_root, source=args.source, image_pattern=args.image_pattern,
        prompt_pool=pool, group_by_image=args.group_by_image, seed=args.seed, allow_outside_root=args.allow_outside_root,
    )  # fmt: skip
    info = {"questions": str(args.questions), "annotations": str(args.annotations), "image_root": str(args.image_root),
            "allow_outside_root": args.allow_outside_root, "prompt_pool": pool, "group_by_image": args.group_by_image,
            "default_suffix": SHORT_ANSWER_SUFFIX}  # fmt: skip
    _report(convert(samples, rejections, _convert_options(args), num_input_records=total, source=args.source, input_info=info))


def cmd_pref(args: argparse.Namespace) -> None:
    from data_prep.pref import VLFEEDBACK_RATING, load_pref

    _input_file(args.annotations, "--annotations")
    _image_root(args.image_root)
    source = args.source or Path(args.annotations).stem
    samples, rejections, total = load_pref(args.annotations, args.image_root, source, args.format,
                                           allow_outside_root=args.allow_outside_root)  # fmt: skip
    info = {"annotations": str(args.annotations), "image_root": str(args.image_root), "format": args.format,
            "allow_outside_root": args.allow_outside_root}  # fmt: skip
    if args.format == "vlfeedback":
        info["rating"] = VLFEEDBACK_RATING
    _report(convert(samples, rejections, _convert_options(args), num_input_records=total, source=source, input_info=info))


def cmd_synth(args: argparse.Namespace) -> None:
    import dataclasses

    from mm.atomic import write_json_atomic
    from data_prep.synth.detail import DetailConfig
    from data_prep.synth.eval_splits import write_eval
    from data_prep.synth.generate import SynthConfig, write_train
    from data_prep.synth.world import WorldConfig

    if args.image_size > MAX_SYNTH_IMAGE_SIZE:
        raise BadInput(f"--image-size must be at most {MAX_SYNTH_IMAGE_SIZE}, got {args.image_size}")
    world = WorldConfig(
        image_size=args.image_size, grid=args.grid, shapes=tuple(args.shapes.split(",")),
        colors=tuple(args.colors.split(",")), min_objects=args.min_objects, max_objects=args.max_objects,
    )  # fmt: skip
    if not args.detail and (args.num_detail_train is not None or args.num_detail_eval is not None
                            or args.detail_object_px is not None):
        raise ValueError("--num-detail-train, --num-detail-eval and --detail-object-px need --detail")
    sizes = {} if args.detail_object_px is None else {"object_px": tuple(args.detail_object_px)}
    detail = DetailConfig(num_train=args.num_detail_train, num_eval=args.num_detail_eval, **sizes) if args.detail else None
    config = SynthConfig(num_train=args.num_train, num_eval=args.num_eval, seed=args.seed, world=world,
                         min_turns=args.min_turns, max_turns=args.max_turns, ifeval=not args.no_ifeval, noise=args.noise,
                         pref=not args.no_pref, detail=detail)  # fmt: skip
    for split, result in write_train(config, _convert_options(args)).items():
        _report(result, split)
    counts = write_eval(config, args.out)
    write_json_atomic(Path(args.out) / "synth.json", {"config": dataclasses.asdict(config), "command": args.command_line, "eval": counts})
    print("[eval] " + ", ".join(f"{name} {count}" for name, count in counts.items()))


def cmd_inspect(args: argparse.Namespace) -> None:
    from data_prep.inspect_shards import (check_dump_options, dump_contact_sheet, format_report, inspect_directory,
                                          load_tokenizer_option)  # fmt: skip
    from data_prep.score_report import cmd_score_report, wants_score_report

    if wants_score_report(args):
        return cmd_score_report(args)
    if not Path(args.directory).is_dir():
        raise FileNotFoundError(f"{args.directory} is not a directory")
    check_dump_options(args.dump, args.dump_out)
    tokenizer = load_tokenizer_option(args.tokenizer) if args.tokenizer else None
    report = inspect_directory(args.directory, tokenizer)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.dump:
        out = args.dump_out or str(Path(args.directory) / "contact_sheet.html")
        written = dump_contact_sheet(args.directory, args.dump, out)
        print(f"contact sheet with {written} samples: {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mm-prep", description="Datasets -> validated webdataset shards.")
    commands = parser.add_subparsers(dest="command", required=True)

    llava = commands.add_parser("llava", help="LLaVA JSON/JSONL annotations + image folder -> shards")
    llava.add_argument("--annotations", required=True, help="LLaVA .json (list) or .jsonl file")
    _add_image_root(llava, default=".", help="folder the records' image paths are relative to (and must stay in)")
    llava.add_argument("--source", default=None, help="dataset name stored with each sample (default: file stem)")
    llava.add_argument("--source-by-image-dir", action="store_true",
                       help="source = SOURCE/<first folder of the image path> (SOURCE/text for text-only), for mixtures")
    _add_shard_options(llava)
    llava.set_defaults(run=cmd_llava)

    vqa = commands.add_parser("vqa", help="VQAv2-layout questions + annotations -> instruction shards")
    vqa.add_argument("--questions", required=True)
    vqa.add_argument("--annotations", required=True)
    _add_image_root(vqa, required=True, help="folder of the images (they must stay in it)")
    vqa.add_argument("--image-pattern", default="COCO_{data_subtype}_{image_id:012d}.jpg",
                     help="image file name; fields {image_id} and {data_subtype} (from the questions file)")
    suffix = vqa.add_mutually_exclusive_group()
    suffix.add_argument("--prompt-suffix", default=SHORT_ANSWER_SUFFIX, help="appended to each question on a new line")
    suffix.add_argument("--prompt-pool", help="file of suffixes (one per line, or a JSON list), one drawn per question")
    vqa.add_argument("--group-by-image", action="store_true", help="one multi-turn sample per image")
    vqa.add_argument("--source", default="vqav2")
    _add_shard_options(vqa)
    vqa.set_defaults(run=cmd_vqa)

    from data_prep.pref import FORMATS as PREF_FORMATS

    pref = commands.add_parser("pref", help="preference pairs (prompt, chosen, rejected) -> preference shards for DPO")
    pref.add_argument("--annotations", required=True,
                      help=".json (list) or .jsonl records; .parquet for the rlhf-v and vlfeedback releases")
    pref.add_argument("--format", choices=PREF_FORMATS, default="llava",
                      help="llava (conversations ending with the prompt + chosen, rejected), rlhf-v "
                           "(openbmb/RLHF-V-Dataset), vlfeedback (MMInstruction/VLFeedback: best vs worst rated)")
    _add_image_root(pref, default=".", help="folder the records' image paths are relative to (and must stay in); "
                                            "vlfeedback: the extracted merged_images/ ({id}.jpg)")
    pref.add_argument("--source", default=None, help="dataset name stored with each sample (default: file stem)")
    _add_shard_options(pref)
    pref.set_defaults(run=cmd_pref)

    synth = commands.add_parser("synth", help="generated scene-graph data: align/, instruct/, ifeval/, pref/ (and detail/) shards, eval/ splits")
    synth.add_argument("--num-train", type=int, default=2000, help="training scenes")
    synth.add_argument("--num-eval", type=int, default=300, help="held-out evaluation scenes")
    synth.add_argument("--image-size", type=int, default=64)
    synth.add_argument("--grid", type=int, default=3)
    synth.add_argument("--shapes", default="circle,square,triangle", help="comma-separated (circle,square,triangle,diamond)")
    synth.add_argument("--colors", default="red,green,blue,yellow,purple,cyan", help="comma-separated palette names")
    synth.add_argument("--min-objects", type=int, default=1)
    synth.add_argument("--max-objects", type=int, default=4)
    synth.add_argument("--min-turns", type=int, default=2, help="fewest QA turns per instruct sample")
    synth.add_argument("--max-turns", type=int, default=5, help="most QA turns per instruct sample")
    synth.add_argument("--noise", type=float, default=0.0,
                       help="fraction of instruct samples given a wrong answer or another scene's image (noise.jsonl)")
    synth.add_argument("--no-ifeval", action="store_true",
                       help="skip the ifeval/ shards (questions under IFEval instructions) and eval/ifeval/")
    synth.add_argument("--no-pref", action="store_true",
                       help="skip the pref/ shards (hallucination preference pairs for DPO)")
    synth.add_argument("--detail", action="store_true",
                       help="also write the small-detail split: detail/ shards and eval/detail/ (task synth_detail), "
                            "192-384 px images of several aspect ratios with objects below a pixel at a 64-px view")
    synth.add_argument("--num-detail-train", type=int, default=None, help="detail training scenes (default: --num-train)")
    synth.add_argument("--num-detail-eval", type=int, default=None, help="detail evaluation scenes (default: --num-eval)")
    synth.add_argument("--detail-object-px", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                       help="detail objects' size range in pixels of the 64-px view (default 0.7 1.0)")
    _add_shard_options(synth, samples_per_shard=500)
    synth.set_defaults(run=cmd_synth)

    from data_prep.score_report import add_score_options
    from data_prep.select import add_select_command

    inspect = commands.add_parser("inspect", help="statistics of a shard directory; --dump writes a contact sheet; "
                                                  "--scores: histograms and extremes of `mm-prep score` scores")
    inspect.add_argument("directory", help="shard directory (or a SCORES.jsonl with --shards)")
    inspect.add_argument("--dump", type=int, default=0, metavar="N", help="write the first N samples as HTML")
    inspect.add_argument("--dump-out", default=None, help="contact sheet path (default: DIR/contact_sheet.html)")
    inspect.add_argument("--tokenizer", default=None, help="tokenizer (hub id or local dir) to add token statistics")
    inspect.add_argument("--json", action="store_true", help="print the statistics as JSON")
    add_score_options(inspect)
    inspect.set_defaults(run=cmd_inspect)
    add_score_command(commands)
    add_select_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = list(sys.argv) if argv is None else ["mm-prep", *argv]

    def run() -> int:
        args.run(args)
        return 0

    return run_cli(f"mm-prep {args.command}", run,
                   bad_input=(OutputDirError, ConversionInterrupted, FileNotFoundError, ValueError,
                              PermissionError, IsADirectoryError, NotADirectoryError))  # each names its path

if __name__ == "__main__":
    sys.exit(main())
