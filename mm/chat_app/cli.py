"""`mm-chat CKPT`: talk to a checkpoint (ours or a llava-hf directory) in the terminal, or with `--web` in
the browser (`--compare CKPT2` puts a second model beside the first there).

Bad input (an option's value, a checkpoint that cannot be loaded, a port in use) is one line on stderr,
`mm-chat: error: ...`, and status 2 (`mm.cli_errors`); in a terminal chat, errors are one line each and a
script's first one ends the run with status 2 (`mm.chat_app.terminal`).
"""

from __future__ import annotations

import argparse
import math
import sys

from mm.chat_app.session import ChatError, Sampling, context_length
from mm.cli_errors import OneLineParser, checked_number, run_cli, whole_number_at_least

temperature = checked_number(float, lambda t: math.isfinite(t) and (t == 0 or t >= Sampling.MIN_TEMPERATURE),
                             f"0 (greedy) or a finite number >= {Sampling.MIN_TEMPERATURE}")
probability = checked_number(float, lambda p: 0 < p <= 1, "a number in (0, 1]")
positive = whole_number_at_least(1)
seed = checked_number(int, lambda n: 0 <= n <= Sampling.MAX_SEED, f"a whole number from 0 to {Sampling.MAX_SEED}")
port = checked_number(int, lambda n: 1 <= n <= 65535, "a port number from 1 to 65535")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mm-chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="model directory (ours or llava-hf) or hub id")
    parser.add_argument("--compare", default=None, metavar="CKPT2",
                        help="a second model answering the same images and prompts beside the first (--web)")
    parser.add_argument("--web", action="store_true", help="serve a browser UI instead of the terminal chat")
    parser.add_argument("--host", default="127.0.0.1", help="address the web UI binds (default: loopback only)")
    parser.add_argument("--port", type=port, default=7860, help="web UI port")
    parser.add_argument("--share", action="store_true", help="also expose the web UI through a public share link")
    defaults = Sampling()
    parser.add_argument("--temperature", type=temperature, default=defaults.temperature,
                        help=f"sampling temperature; 0: greedy and deterministic (default {defaults.temperature})")
    parser.add_argument("--top-p", type=probability, default=defaults.top_p, help="nucleus sampling mass, in (0, 1]")
    parser.add_argument("--max-new-tokens", type=positive, default=defaults.max_new_tokens,
                        help="longest answer in tokens (the conversation and the answer must fit the model's context)")
    parser.add_argument("--seed", type=seed, default=defaults.seed, help="sampling seed")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with a hub checkpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a bad option: one line and status 2 (OneLineParser)
    # OSError: a port in use, a checkpoint path that is not there
    return run_cli("mm-chat", lambda: _chat(args), bad_input=(ChatError, OSError))


def _chat(args: argparse.Namespace) -> int:
    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens, args.seed)
    sampling.check()
    if args.compare and not args.web:
        raise ChatError("--compare needs --web (the terminal chat talks to one model)")
    if args.web:
        from mm.chat_app.web import require_gradio

        require_gradio()  # before minutes of loading
    models = [(path, _load(path, args)) for path in [args.checkpoint, args.compare] if path]
    for path, model in models:
        _check_room_for_an_answer(path, model, sampling)
    if args.web:
        from mm.chat_app.web import launch

        launch(models, sampling, host=args.host, port=args.port, share=args.share)
        return 0
    from mm.chat_app.session import ChatSession
    from mm.chat_app.terminal import run_terminal

    (name, model), = models
    return run_terminal(ChatSession(model, sampling, name=name))


def _load(path: str, args):
    import torch

    from mm.loading import load_for_inference

    device = _device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        return load_for_inference(path, device, args.dtype, trust_remote_code=args.trust_remote_code)[0]
    except (OSError, ValueError) as error:
        raise ChatError(f"cannot load {path}: {error}") from None


def _device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ChatError(f"--device {name!r} is not a device torch knows (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ChatError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name


def _check_room_for_an_answer(path: str, model, sampling: Sampling) -> None:
    context = context_length(model)
    if context is not None and sampling.max_new_tokens >= context:
        raise ChatError(f"--max-new-tokens {sampling.max_new_tokens} leaves no room for a prompt in the context of "
                        f"{path} ({context} tokens)")


if __name__ == "__main__":
    sys.exit(main())
