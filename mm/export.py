"""`mm-export hf-llava CHECKPOINT OUT` / `mm-export hf-llava-next CHECKPOINT OUT`: write a transformers Llava
(LlavaNext for anyres models) directory from an mm checkpoint."""

from __future__ import annotations

import argparse
import sys

import mm
from mm.cli_errors import BadInput, OneLineParser, one_line, run_cli
from mm.export_target import check_export_target, source_identity

FORMATS = {  # subcommand -> (mm.llava exporter, help)
    "hf-llava": ("export_llava_hf",
                 "transformers LlavaForConditionalGeneration directory (transformers CLIP/SigLIP tower, mlp2x_gelu)"),
    "hf-llava-next": ("export_llava_next_hf",
                      ("transformers LlavaNextForConditionalGeneration directory (an anyres model without "
                       "anyres_max_tiles; transformers CLIP/SigLIP tower, mlp2x_gelu)")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mm-export", description=__doc__)
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, (_, help_text) in FORMATS.items():
        command = formats.add_parser(name, help=help_text)
        command.add_argument("checkpoint", help="mm checkpoint directory (from save_pretrained / mm-train)")
        command.add_argument("out", help="output directory; an earlier export of this checkpoint written there is "
                                         "replaced, any other existing folder is refused")
        command.add_argument("--overwrite", action="store_true",
                             help="write into an existing folder that is not an earlier export of this checkpoint (only "
                                  "the export's own files are replaced; other files, and the checkpoint itself, are "
                                  "never touched)")
        command.add_argument("--dtype", default=None, help="cast weights first: float32, bfloat16 or float16")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("mm-export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    from mm import llava  # torch and transformers: not for --help or a refusal
    from mm.loading import INFERENCE_DTYPES

    # before loading: a refused option or folder should not cost a model load
    if args.dtype is not None and args.dtype not in INFERENCE_DTYPES:
        raise BadInput(f"--dtype {args.dtype!r} is not one of {', '.join(INFERENCE_DTYPES)}")
    source = source_identity(args.checkpoint, "checkpoint")
    check_export_target(args.out, sources=[args.checkpoint], source=source, overwrite=args.overwrite)
    try:
        model = mm.load_pretrained(args.checkpoint, torch_dtype=args.dtype)
    except (OSError, ValueError) as err:
        raise BadInput(f"cannot load {args.checkpoint}: {one_line(err)}") from err
    try:
        getattr(llava, FORMATS[args.format][0])(model, args.out, source=source, overwrite=args.overwrite)
    except llava.LlavaIncompatible as err:
        raise BadInput(f"cannot export {args.checkpoint} as {args.format}: {one_line(err)}") from err
    except OSError as err:  # disk full, a folder removed or made read-only while the model loaded
        raise BadInput(f"cannot write {args.out}: {err.strerror or err}") from err
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
