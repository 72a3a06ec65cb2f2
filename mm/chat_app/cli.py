"""`mm-chat CKPT`: talk to a checkpoint (ours or a llava-hf directory) in the terminal, or with `--web` in
the browser (`--compare CKPT2` puts a second model beside the first there)."""

from __future__ import annotations

import argparse
import sys

from mm.chat_app.session import ChatError, Sampling


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm-chat", description=__doc__)
    parser.add_argument("checkpoint", help="model directory (ours or llava-hf) or hub id")
    parser.add_argument("--compare", default=None, metavar="CKPT2",
                        help="a second model answering the same images and prompts beside the first (--web)")
    parser.add_argument("--web", action="store_true", help="serve a browser UI instead of the terminal chat")
    parser.add_argument("--host", default="127.0.0.1", help="address the web UI binds (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="web UI port")
    parser.add_argument("--share", action="store_true", help="also expose the web UI through a public share link")
    defaults = Sampling()
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help=f"sampling temperature; 0: greedy and deterministic (default {defaults.temperature})")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling mass")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="longest answer in tokens")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with a hub checkpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens, args.seed)
    try:
        sampling.check()
        if args.compare and not args.web:
            raise ChatError("--compare needs --web (the terminal chat talks to one model)")
        if args.web:
            from mm.chat_app.web import require_gradio

            require_gradio()  # before minutes of loading
        models = [(path, _load(path, args)) for path in [args.checkpoint, args.compare] if path]
        if args.web:
            from mm.chat_app.web import launch

            launch(models, sampling, host=args.host, port=args.port, share=args.share)
            return 0
    except (ChatError, OSError, ValueError) as error:  # OSError: a port in use, too
        print(f"mm-chat: {error}", file=sys.stderr)
        return 2
    from mm.chat_app.session import ChatSession
    from mm.chat_app.terminal import run_terminal

    (name, model), = models
    return run_terminal(ChatSession(model, sampling, name=name))


def _load(path: str, args):
    import torch

    from mm.loading import load_for_inference

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return load_for_inference(path, device, args.dtype, trust_remote_code=args.trust_remote_code)[0]
    except (OSError, ValueError) as error:
        raise ChatError(f"cannot load {path}: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
