"""`mm-export hf-llava CHECKPOINT OUT` / `mm-export hf-llava-next CHECKPOINT OUT`: write a transformers Llava
(LlavaNext for anyres models) directory from an mm checkpoint."""

from __future__ import annotations

import argparse
import sys

import mm
from mm.cli_errors import run_cli
from mm.export_target import ExportTargetError, check_export_target

FORMATS = {  # subcommand -> (mm.llava exporter, help)
    "hf-llava": ("export_llava_hf",
                 "transformers LlavaForConditionalGeneration directory (transformers CLIP/SigLIP tower, mlp2x_gelu)"),
    "hf-llava-next": ("export_llava_next_hf",
                      ("transformers LlavaNextForConditionalGeneration directory (an anyres model without "
                       "anyres_max_tiles; transformers CLIP/SigLIP tower, mlp2x_gelu)")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm-export", description=__doc__)
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, (_, help_text) in FORMATS.items():
        command = formats.add_parser(name, help=help_text)
        command.add_argument("checkpoint", help="mm checkpoint directory (from save_pretrained / mm-train)")
        command.add_argument("out", help="output directory; an earlier export there is replaced, other folders are "
                                         "refused")
        command.add_argument("--overwrite", action="store_true",
                             help="write into an existing folder that is not an earlier export (only the export's "
                                  "own files are replaced; other files, and the checkpoint itself, are never touched)")
        command.add_argument("--dtype", default=None, help="cast weights first: float32, bfloat16 or float16")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("mm-export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    from mm import llava  # torch and transformers: not for --help or a refusal

    try:  # before loading: a refused folder should not cost a model load
        check_export_target(args.out, sources=[args.checkpoint], overwrite=args.overwrite)
    except ExportTargetError as err:
        print(f"mm-export: {err}", file=sys.stderr)
        return 2
    try:
        model = mm.load_pretrained(args.checkpoint, torch_dtype=args.dtype)
    except (OSError, ValueError) as err:
        print(f"mm-export: cannot load {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    try:
        getattr(llava, FORMATS[args.format][0])(model, args.out)
    except llava.LlavaIncompatible as err:
        print(f"mm-export: cannot export {args.checkpoint} as {args.format}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, a folder removed or made read-only while the model loaded
        print(f"mm-export: cannot write {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
