"""The web chat page in real headless Chromium (Playwright): send, watch the reply stream in, regenerate, edit and resend,
the token view toggle, and user/model text containing <script> shown as text. Saves screenshots under the test tmp dir."""

from __future__ import annotations

import time

import pytest

from chatloom.engine import Engine
from chatloom.serve.app import create_app

from .conftest import CHROMIUM, require_chromium
from .test_engine import ScriptedLM, make_tiny_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)
from .test_serve import running

REPLY = "Hi! <b>bold?</b> <script>window.pwned=1</script> done 🙂"

pytestmark = pytest.mark.browser


class SlowScripted(ScriptedLM):
    """Replies with REPLY, one token every 40 ms, so the stream is visible."""

    def forward(self, *a, **kw):
        time.sleep(0.04)
        return super().forward(*a, **kw)


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, bundled_tokenizer_path):
    require_chromium()
    base = Engine.from_pretrained(make_tiny_model_dir(tmp_path_factory.mktemp("tiny-page"), bundled_tokenizer_path))
    script = base.tokenizer.encode(REPLY) + [base.protocol.end_of_turn_id]
    engine = Engine(SlowScripted(base.model, script), base.protocol)
    app = create_app(engine, model_name="scripted")
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                              "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def test_chat_page_streams_regenerates_edits_and_escapes(page_server, browser, tmp_path):
    url, app = page_server
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url + "/")
    page.wait_for_selector("#model-name:has-text('scripted')")
    page.fill("#system", "You are a test.")
    page.fill("#input", "Hello <script>window.pwned=2</script> <img src=x onerror=window.pwned=3>")
    page.click("#send")

    # the reply appears piece by piece
    assistant = page.locator(".msg.assistant .content").last
    lengths = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lengths.append(len(assistant.text_content() or "") if assistant.count() else 0)
        if page.locator(".msg.assistant.streaming").count() == 0 and lengths[-1]:
            break
        time.sleep(0.05)
    partial = {n for n in lengths if 0 < n < len(REPLY)}
    assert len(partial) >= 2, lengths
    page.wait_for_selector(".msg.assistant .meta")
    assert assistant.text_content() == REPLY
    user = page.locator(".msg.user .content").first.text_content()
    assert user.startswith("Hello <script>") and "onerror" in user
    assert page.evaluate("window.pwned") is None
    assert page.locator(".msg script, .msg img, .msg b").count() == 0
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)

    # regenerate: one new request, the reply streams again into the single assistant message
    batches = app.state.scheduler.batches
    page.click(".msg.assistant button.regen")
    page.wait_for_selector(".msg.assistant.streaming")
    page.wait_for_selector(".msg.assistant .meta", timeout=20000)
    assert app.state.scheduler.batches == batches + 1
    assert page.locator(".msg.assistant").count() == 1 and assistant.text_content() == REPLY

    # edit the user message and resend
    page.click(".msg.user button.edit")
    page.fill(".msg.user textarea", "An edited question")
    page.click(".msg.user button.resend")
    page.wait_for_selector(".msg.assistant .meta", timeout=20000)
    assert page.locator(".msg.user .content").first.text_content() == "An edited question"
    assert page.locator(".msg").count() == 2 and app.state.scheduler.batches == batches + 2

    # the conversation as tokens
    page.check("#tokens-toggle")
    page.wait_for_selector("#tokens-summary:has-text('tokens')")
    summary = page.locator("#tokens-summary").text_content()
    assert "chatml" in summary and page.locator("#tokens .tok").count() > 10
    assert page.locator("#tokens .tok.sup").count() > 0
    page.screenshot(path=str(tmp_path / "chat-tokens.png"), full_page=True)
    assert (tmp_path / "chat.png").stat().st_size > 5000 and (tmp_path / "chat-tokens.png").exists()
    assert all(u.startswith(url) for u in requests), "the page loaded something from outside the server"
    page.close()
