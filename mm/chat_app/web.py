"""The browser chat (`mm-chat CKPT --web`): a Gradio page with one chat panel per model.

With two models (`--compare`) every message, with its images, goes to both, and both answers stream side by
side. Each browser tab holds its own conversations (a `ChatSession` per model, kept in `gr.State`), so
visitors never see or extend each other's chats. Answers are shown as plain text, exactly as decoded:
markdown or HTML in a model's output is displayed, not rendered.
"""

from __future__ import annotations

import dataclasses
import html
import ipaddress
import re
import sys
import tempfile
from pathlib import Path

from mm.chat_app.session import ChatError, ChatSession, Sampling, open_picture

CHAT_EXTRA = "pip install -e '.[chat]'"
# Answers keep their exact whitespace (runs of spaces, newlines): plain text in a pre-wrap box.
CSS = ".mm-chat .message-content { white-space: pre-wrap; }"


def require_gradio():
    """The gradio module, or a one-line ChatError saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise ChatError(f"the web UI needs gradio: {CHAT_EXTRA}") from None
    return gradio


class Visitor:
    """One browser tab's chat: a ChatSession per model and the messages its panels show."""

    def __init__(self, models: list[tuple[str, object]], sampling: Sampling):
        self.sessions = [ChatSession(model, dataclasses.replace(sampling), name=name) for name, model in models]
        self.shown: list[list[dict]] = [[] for _ in models]


def build_app(models: list[tuple[str, object]], sampling: Sampling):
    """The UI (a `gradio.Blocks`) for 1 or 2 `(name, model)` pairs; `sampling` gives the controls' defaults."""
    gr = require_gradio()
    if not 1 <= len(models) <= 2:
        raise ChatError(f"the web UI shows one or two models side by side, got {len(models)}")
    saves = tempfile.TemporaryDirectory(prefix="mm-chat-")
    with gr.Blocks(title="mm-chat", analytics_enabled=False) as app:
        gr.Markdown("### mm-chat\nImages (upload, drop or paste) go with the next message"
                    + (", to both models." if len(models) == 2 else "."))
        visitor = gr.State(None)  # made on the tab's first message: gr.State would deep-copy a default
        with gr.Row(equal_height=True):
            chatbots = [gr.Chatbot(label=name, elem_id=f"mm-chat-{i}", elem_classes=["mm-chat"], height=520,
                                   render_markdown=False, latex_delimiters=[], buttons=["copy"],
                                   feedback_options=None) for i, (name, _) in enumerate(models)]
        box = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", show_label=False,
                                   placeholder="Message (Enter sends, Shift+Enter: new line)",
                                   max_plain_text_length=100_000, elem_id="mm-chat-input")
        controls = _sampling_controls(gr, sampling)
        with gr.Row():
            reset = gr.Button("New conversation", size="md", elem_id="mm-reset")
            save_button = gr.Button("Save as LLaVA JSON", size="md", elem_id="mm-save")
        saved = gr.File(label="conversation (LLaVA JSON; `image` holds the uploaded file names)",
                        file_count="multiple", visible=False, interactive=False)

        def respond(message, state, temperature, top_p, max_new_tokens, seed):
            yield from _respond(gr, models, sampling, message, state,
                                Sampling(temperature, top_p, int(max_new_tokens), int(seed or 0)))

        sent = box.submit(respond, [box, visitor, *controls], [box, visitor, *chatbots])
        # A fresh Visitor: an answer still streaming finishes into the old sessions, not the new chat.
        # A panel's own clear button starts over too, for every panel: they show one conversation.
        for trigger in [reset.click, *[chatbot.clear for chatbot in chatbots]]:
            trigger(lambda: (None, *[[] for _ in chatbots], gr.File(value=None, visible=False)),
                    None, [visitor, *chatbots, saved], cancels=[sent])

        def save(state):
            try:
                return gr.File(value=save_chats(state, Path(saves.name)), visible=True)
            except ChatError as error:
                gr.Warning(str(error))
                return gr.skip()

        save_button.click(save, visitor, saved)
    app.mm_saves = saves  # the saved files live as long as the app
    return app


def _sampling_controls(gr, sampling: Sampling) -> list:
    """temperature, top-p, max new tokens and seed, starting at `sampling`."""
    with gr.Accordion("Sampling (each message uses the values set when it is sent)"), gr.Row():
        return [
            gr.Slider(0, 2, value=sampling.temperature, step=0.05, label="temperature (0: greedy)",
                      elem_id="mm-temperature"),
            gr.Slider(0.05, 1, value=sampling.top_p, step=0.05, label="top-p", elem_id="mm-top-p"),
            gr.Slider(1, max(2048, sampling.max_new_tokens), value=sampling.max_new_tokens, step=1,
                      label="max new tokens", elem_id="mm-max-new-tokens"),
            gr.Number(value=sampling.seed, precision=0, label="seed", elem_id="mm-seed"),
        ]


def _respond(gr, models, defaults: Sampling, message: dict | None, state: Visitor | None, sampling: Sampling):
    """The submit handler: attach, ask every model, stream; yields (box, state, *panels)."""
    visitor = state or Visitor(models, defaults)
    text, files = (message or {}).get("text", "") or "", (message or {}).get("files", []) or []
    panels = len(visitor.sessions)
    if not text.strip() and not files:
        yield gr.skip(), visitor, *[gr.skip()] * panels
        return
    try:
        pictures = _check(visitor.sessions, text, files, sampling)
    except ChatError as error:  # nothing was attached or sent: the message stays in the box to fix
        gr.Warning(str(error))
        yield gr.skip(), visitor, *[gr.skip()] * panels
        return
    shown_before = [len(shown) for shown in visitor.shown]
    for session, shown, opened in zip(visitor.sessions, visitor.shown, pictures):
        session.sampling = sampling
        for path, picture in zip(files, opened):
            session.attach_image(picture, name=Path(path).name)
            shown.append({"role": "user", "content": {"path": path}})
        shown.extend([_text("user", text)] if text else [])
        shown.append(_text("assistant", ""))
    yield gr.MultimodalTextbox(value=None, interactive=False), visitor, *visitor.shown
    try:
        for _ in _stream_all(visitor, text, shown_before):
            yield gr.skip(), visitor, *visitor.shown
    except Exception as error:
        yield gr.MultimodalTextbox(value=message, interactive=True), visitor, *visitor.shown
        raise gr.Error(f"generation failed: {error}") from error
    yield gr.MultimodalTextbox(interactive=True), visitor, *visitor.shown


def _check(sessions: list[ChatSession], text: str, files: list[str], sampling: Sampling) -> list[list]:
    """Everything that can refuse a message, before any session changes: settings, text, images (opened
    by each model's own transform; the list per session)."""
    sampling.check()
    for session in sessions:
        session.check_text(text)
    # a bad or huge upload (a decompression bomb) is a warning in the page, not a traceback in the server log
    return [[open_picture(session.transform, path, Path(path).name) for path in files] for session in sessions]


def _stream_all(visitor: Visitor, text: str, shown_before: list[int]):
    """Ask every session `text` and grow the last shown answer of each, a piece from each in turn (so two
    models stream side by side); yields after each round. The final text is the session's own answer.
    If one fails, the answers not finished yet are undone with it."""
    streams = [session.send(text) for session in visitor.sessions]
    answers = [""] * len(streams)
    live = list(range(len(streams)))
    while live:
        for i in list(live):
            try:
                answers[i] += next(streams[i])
            except StopIteration:
                live.remove(i)
                answers[i] = visitor.sessions[i].turns[-1]["value"]
            except Exception:
                for j in live:
                    streams[j].close()  # the session takes its question back
                    _forget_failed_turn(visitor, j, shown_before[j])
                raise
            visitor.shown[i][-1] = _text("assistant", answers[i])
        yield


def _forget_failed_turn(visitor: Visitor, i: int, shown_before: int) -> None:
    """After a failed answer the session is as before the message except that its images are attached
    again, for the next message; the box gets the message back, so detach them and unshow the turn."""
    visitor.sessions[i].detach_pending()
    del visitor.shown[i][shown_before:]


def _text(role: str, text: str) -> dict:
    # Escaped because the panels show text as HTML when markdown is off; a typed part skips the
    # indentation clean-up gradio applies to plain strings: the panel shows the answer as decoded.
    return {"role": role, "content": {"type": "text", "text": html.escape(text, quote=False)}}


def save_chats(state: Visitor | None, folder: Path) -> list[str]:
    """Each model's conversation as a one-record LLaVA JSON file in a new folder under `folder`."""
    sessions = [session for session in (state.sessions if state else []) if session.turns]
    if not sessions:
        raise ChatError("nothing to save yet")
    batch = Path(tempfile.mkdtemp(dir=folder))
    return [str(session.save(batch / f"chat-{i}-{_slug(session.name)}.json")) for i, session in enumerate(sessions)]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.rstrip("/")).name or name)[:60] or "model"


def launch(models: list[tuple[str, object]], sampling: Sampling, *, host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, block: bool = True):
    """Serve `build_app(models, sampling)` on host:port (loopback unless told otherwise; a public share link
    only with share=True). Blocks until interrupted; with block=False returns the running app (`app.close()`
    stops it)."""
    app = build_app(models, sampling)
    if not _is_loopback(host):
        print(f"mm-chat: serving on {host}: anyone who can reach this address can use the models",
              file=sys.stderr)
    app.queue(default_concurrency_limit=1)  # one answer at a time: models share one device
    app.launch(server_name=host, server_port=port, share=share, ssr_mode=False, css=CSS, show_error=True,
               inbrowser=False, max_file_size="50mb", prevent_thread_lock=not block)
    return app


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
