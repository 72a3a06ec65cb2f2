"""Regenerate docs/chat_web.png: the browser chat (`mm-chat A --web --compare B`) with two checkpoints
answering the same image and messages, greedily. The README's, from the folder holding `demo_out`
(`make demo-dpo DPO_RUN=dpo_lr5e-6`):

    python docs/make_screenshot.py demo_out/stage2/export demo_out/dpo_lr5e-6/export \\
        demo_out/synth/eval/images/000001000001.png

Needs chromium and chromedriver; the page is driven as tests/test_chat_web.py drives it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Describe the image."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs=2, help="the two models, left and right")
    parser.add_argument("image")
    parser.add_argument("--prompt", action="append", help=f"a message; repeat for more turns (default {PROMPTS})")
    parser.add_argument("--upscale", type=int, default=3,
                        help="upload the image N times larger (nearest neighbour) so the page shows more than a "
                             "thumbnail; the models answer about the file uploaded (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "chat_web.png")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))
    import test_chat_web as page

    import mm
    from mm.chat_app.session import Sampling

    models = [(path, mm.load_pretrained(path).eval()) for path in args.checkpoints]
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / Path(args.image).name
        with Image.open(args.image) as picture:
            picture.resize((picture.width * args.upscale, picture.height * args.upscale), Image.NEAREST).save(image)
        with page.serving(models, Sampling()) as (_, url), page.browser() as driver:
            driver.set_window_size(1400, 1100)
            page.open_page(driver, url, args.max_new_tokens)
            for turn, prompt in enumerate(args.prompt or PROMPTS):
                for name, answer in zip(args.checkpoints, page.send(driver, prompt, 2, image=None if turn else image)):
                    print(f"{name}: {answer}")
            for panel in page.css(driver, ".mm-chat [role=log]"):  # the conversation from its start
                driver.execute_script("arguments[0].scrollTop = 0", panel)
            driver.save_screenshot(str(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
