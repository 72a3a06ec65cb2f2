"""The browser chat (`mm-chat CKPT --web`), driven for real: a server on a free loopback port, headless
Chromium uploads an image and sends a message, and the answer the page shows is `mm.generation.generate`'s
for the same conversation, to the character. Needs chromium and chromedriver (Debian's `chromium`,
`chromium-driver`; .ci/run installs them); without them the browser tests skip, saying so.

MM_CHAT_SCREENSHOT=PATH saves the two-model page as PNG; docs/make_screenshot.py makes the README's from
trained demo checkpoints with the same page driving.
"""

import html
import json
import os
import shutil
import socket
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pytest
import torch
from helpers_model import tiny_model
from test_llava_chat_flow import photo

from mm.chat import encode_prompt, stop_token_ids
from mm.chat_app import web
from mm.chat_app.session import ChatError, Sampling
from mm.generation import generate

QUESTION = "What is in the picture?"
FOLLOW_UP = "And the colours?"
MAX_NEW_TOKENS = 40
# The page starts sampling at 0.7: the test's greedy answers only match if the page's controls are used.
PAGE_DEFAULTS = Sampling(temperature=0.7, top_p=0.9, max_new_tokens=300, seed=3)
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no headless browser: needs chromium and chromedriver on PATH "
           "(apt-get install chromium chromium-driver; .ci/run installs them)")
TIMEOUT_S = 30
GREEDY = Sampling(temperature=0, max_new_tokens=MAX_NEW_TOKENS)


def reference(model, image_path, questions: list[str]) -> list[str]:
    """The greedy answers of `generate` to `questions` asked in turn about one image (attached to the first)."""
    transform = model.make_image_transform()
    pixels = transform.normalize(torch.stack([transform(transform.open(image_path))]))
    tokenizer, template = model.tokenizer, model.config.chat_template
    stops = stop_token_ids(tokenizer, template)
    turns, answers = [], []
    for i, question in enumerate(questions):
        turns.append({"from": "human", "value": f"<image>\n{question}" if i == 0 else question})
        ids = torch.tensor([encode_prompt(turns, tokenizer, template, tokens_per_image=model.tokens_per_image)])
        tokens = generate(model, ids, torch.ones_like(ids), pixels, max_new_tokens=MAX_NEW_TOKENS,
                          eos_token_id=stops)[0].tolist()
        tokens = tokens[:next((k for k, token in enumerate(tokens) if token in stops), len(tokens))]
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
        turns.append({"from": "gpt", "value": answers[-1]})
    return answers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def models():
    # Seeds whose greedy answers hold tabs (seed 45: shown as typed, not collapsed) and "</" (seed 24: shown,
    # not parsed as a tag); the second model's image transform differs too: each panel must use its own.
    return [("tiny-a", tiny_model(seed=45)), ("tiny-b", tiny_model(seed=24, image_transform="crop"))]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat_web") / "photo.png"
    photo().save(path)
    return path


@contextmanager
def serving(models, sampling: Sampling = PAGE_DEFAULTS):
    port = free_port()
    app = web.launch(models, sampling, port=port, block=False)  # the default host
    try:
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def test_launch_binds_loopback_by_default_and_shares_nothing(models):
    with serving(models[:1]) as (app, url):
        assert (app.server_name, app.share, app.share_url) == ("127.0.0.1", False, None)
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as page:
            assert page.status == 200 and b"mm-chat" in page.read()


def panel_texts(update) -> list[str]:
    """The last message of each panel in one update of the send handler, as plain text."""
    return [html.unescape(shown[-1]["content"]["text"]) for shown in update[2:]]


def test_answers_stream_into_each_panel_and_end_as_generate_does(models, image):
    updates = [(update[0], update[1], panel_texts(update))
               for update in web._respond(gr, models, GREEDY, {"text": QUESTION, "files": [str(image)]}, None, GREEDY)]
    expected = [reference(model, image, [QUESTION])[0] for _, model in models]
    assert updates[0][0].interactive is False and updates[-1][0].interactive is True  # no sending meanwhile
    assert updates[-1][2] == expected
    for panel, answer in enumerate(expected):
        steps = [texts[panel] for _, _, texts in updates]
        assert all(answer.startswith(step) for step in steps)  # each update shows more of the answer
        assert len(set(steps)) > 5
    visitor = updates[-1][1]
    assert [len(shown) for shown in visitor.shown] == [3, 3]  # image, question, answer
    assert all(session.turns[-1]["value"] == answer for session, answer in zip(visitor.sessions, expected))
    # Another tab starts from nothing: its first answer is the first answer, not a follow-up.
    other = list(web._respond(gr, models, GREEDY, {"text": QUESTION, "files": [str(image)]}, None, GREEDY))
    assert other[-1][1] is not visitor and panel_texts(other[-1]) == expected


@pytest.mark.parametrize("problem", ["image", "text", "sampling"])
def test_a_refused_message_changes_nothing_and_stays_in_the_box(models, image, tmp_path, problem):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    message = {"text": "<image> here" if problem == "text" else QUESTION,
               "files": [str(image), str(broken)] if problem == "image" else [str(image)]}
    sampling = Sampling(temperature=-1) if problem == "sampling" else GREEDY
    with pytest.warns(UserWarning, match={"image": "cannot open image broken.png", "text": "upload button",
                                          "sampling": "temperature"}[problem]):
        updates = list(web._respond(gr, models, GREEDY, message, None, sampling))
    (box, visitor, *panels), = updates
    assert box == gr.skip() and panels == [gr.skip()] * 2
    assert all(not (session.turns or session.images or session.pending) for session in visitor.sessions)


def test_a_failed_answer_is_undone_and_the_message_given_back(models, image, monkeypatch):
    def broken_stream(*args, **kwargs):
        yield torch.tensor([7])
        raise RuntimeError("out of memory")

    visitor = web.Visitor(models, GREEDY)
    monkeypatch.setattr("mm.chat_app.session.stream_tokens", broken_stream)
    message = {"text": QUESTION, "files": [str(image)]}
    updates = []
    with pytest.raises(gr.Error, match="out of memory"):
        updates.extend(web._respond(gr, models, GREEDY, message, visitor, GREEDY))
    box = updates[-1][0]
    assert box.interactive is True and box.value["text"] == QUESTION
    assert [file["orig_name"] for file in box.value["files"]] == ["photo.png"]
    assert visitor.shown == [[], []]
    assert all(not (session.turns or session.images or session.pending) for session in visitor.sessions)


def test_save_writes_each_conversation_as_llava_json(models, image, tmp_path):
    with pytest.raises(ChatError, match="nothing to save"):
        web.save_chats(None, tmp_path)
    *_, (_, visitor, *_) = web._respond(gr, models, GREEDY, {"text": QUESTION, "files": [str(image)]}, None,
                                       GREEDY)
    paths = web.save_chats(visitor, tmp_path)
    assert [os.path.basename(path) for path in paths] == ["chat-0-tiny-a.json", "chat-1-tiny-b.json"]
    for path, session in zip(paths, visitor.sessions):
        (record,) = json.loads(Path(path).read_text())
        assert record["image"] == "photo.png" and record["conversations"] == session.turns
        assert record["conversations"][0]["value"] == f"<image>\n{QUESTION}"


@contextmanager
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # root in CI needs --no-sandbox; a small /dev/shm in containers needs the last one
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                     "--no-proxy-server", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # no driver download
    try:
        driver.implicitly_wait(0)
        yield driver
    finally:
        driver.quit()


def wait_for(condition, what: str):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what}")


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def set_number(driver, control: str, value) -> None:
    """Type into a slider's number box, as a person would; Tab commits it."""
    from selenium.webdriver.common.keys import Keys

    field, = css(driver, f"#{control} input[type=number]")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)
    wait_for(lambda: float(field.get_attribute("value")) == value, f"{control} to read {value}")


def answers(driver, panel: int) -> list[str]:
    """The answers panel `panel` shows, as rendered text (innerText: what the page displays)."""
    return [driver.execute_script("return arguments[0].innerText", element)
            for element in css(driver, f"#mm-chat-{panel} [data-testid=bot] .message-content")]


def idle(driver, panels: int) -> bool:
    """Gradio's own progress display on every panel is hidden: no answer pending or streaming."""
    trackers = [css(driver, f"#mm-chat-{panel} > [data-testid=status-tracker]") for panel in range(panels)]
    return all(found and "hide" in found[0].get_attribute("class").split() for found in trackers)


def send(driver, text: str, panels: int, image=None) -> list[str]:
    """Attach `image` (through the upload input), send `text`, wait until every panel has a new answer, the
    page is idle and the answers have stopped changing; returns each panel's last answer."""
    from selenium.webdriver.common.keys import Keys

    before = [len(answers(driver, panel)) for panel in range(panels)]
    if image is not None:
        css(driver, "#mm-chat-input input[type=file]")[0].send_keys(str(image))
        wait_for(lambda: css(driver, "#mm-chat-input img"), "the upload's thumbnail")
    box, = css(driver, "#mm-chat-input textarea")
    box.send_keys(text, Keys.ENTER)
    # Idle alone is also the moment before the answer starts: an answer more in every panel rules that out.
    wait_for(lambda: idle(driver, panels) and all(len(answers(driver, panel)) == count + 1
                                                  for panel, count in enumerate(before)), "the answers")

    def settled():  # the page renders text asynchronously: the last update may still be on its way
        shown = [answers(driver, panel)[-1] for panel in range(panels)]
        time.sleep(0.3)
        return shown if shown == [answers(driver, panel)[-1] for panel in range(panels)] else None
    return wait_for(settled, "the answers to stop changing")


def open_page(driver, url: str, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
    """Load the page and set greedy answers of at most `max_new_tokens`, with the page's own controls."""
    driver.get(url)
    wait_for(lambda: css(driver, "#mm-chat-input textarea"), "the page")
    set_number(driver, "mm-temperature", 0)
    set_number(driver, "mm-max-new-tokens", max_new_tokens)


@needs_browser
def test_browser_chat_answers_as_generate_does(models, image):
    model = models[0][1]
    expected = reference(model, image, [QUESTION, FOLLOW_UP])
    with serving(models[:1]) as (_, url), browser() as driver:
        open_page(driver, url)
        assert send(driver, QUESTION, 1, image=image) == [expected[0]]
        assert send(driver, FOLLOW_UP, 1) == [expected[1]]  # the image stays in the conversation
        assert len(css(driver, "#mm-chat-0 [data-testid=user] img")) == 1
        driver.switch_to.new_window("tab")  # another visitor: a conversation of its own
        open_page(driver, url)
        assert send(driver, QUESTION, 1, image=image) == [expected[0]] and len(answers(driver, 0)) == 1


@needs_browser
def test_browser_compares_two_models_side_by_side(models, image):
    expected = [reference(model, image, [QUESTION])[0] for _, model in models]
    assert expected[0] != expected[1]
    with serving(models) as (_, url), browser() as driver:
        open_page(driver, url)
        assert send(driver, QUESTION, 2, image=image) == expected
        if os.environ.get("MM_CHAT_SCREENSHOT"):
            driver.save_screenshot(os.environ["MM_CHAT_SCREENSHOT"])


def test_the_readme_shows_the_screenshot():
    root = Path(__file__).resolve().parents[1]
    assert "](docs/chat_web.png)" in (root / "README.md").read_text()
    assert (root / "docs" / "chat_web.png").read_bytes().startswith(b"\x89PNG")
