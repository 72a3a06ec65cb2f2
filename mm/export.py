"""`mm-export hf-llava CHECKPOINT OUT`: write a transformers Llava directory from an mm checkpoint."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm-export", description=__doc__)
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    llava = formats.add_parser(
        "hf-llava",
        help="transformers LlavaForConditionalGeneration directory (transformers CLIP/SigLIP tower, mlp2x_gelu)",
    )
    llava.add_argument("checkpoint", help="mm checkpoint directory (from save_pretrained / mm-train)")
    llava.add_argument("out", help="output directory (replaced atomically if it exists)")
    llava.add_argument("--dtype", default=None, help="cast weights first: float32, bfloat16 or float16")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import mm
    from mm.llava import LlavaIncompatible, export_llava_hf

    try:
        model = mm.load_pretrained(args.checkpoint, torch_dtype=args.dtype)
    except (OSError, ValueError) as err:
        print(f"mm-export: cannot load {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    try:
        export_llava_hf(model, args.out)
    except LlavaIncompatible as err:
        print(f"mm-export: cannot export {args.checkpoint} as hf-llava: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
