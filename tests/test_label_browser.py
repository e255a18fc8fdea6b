"""The labeling app in a real headless Chromium: admin creates a project, a labeler writes a prompt, another labeler
drafts a reply with a tiny random model served by `chatloom serve` on loopback, edits and submits it, a reviewer ranks,
and the export carries author, draft model and edit distance. Screenshots of every page go to the test's tmp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher

from chatloom.label import auth
from chatloom.label.app import create_app
from chatloom.label.db import Database
from chatloom.label.editdistance import levenshtein

from .conftest import CHROMIUM, require_chromium
from .label_live import LiveServer, free_port
from .test_engine import make_tiny_model_dir

PW = "correct horse battery"
pytestmark = [pytest.mark.browser, pytest.mark.slow]


class ServeProcess:
    """`chatloom serve` (the real command, in a subprocess) with a tiny random Llama on a loopback port. It starts in
    the background while the browser part of the test runs; `ready()` waits for it (bounded)."""

    def __init__(self, model_dir: Path):
        self.port = free_port()
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "chatloom.cli", "serve", "--model", str(model_dir), "--host",
                                      "127.0.0.1", "--port", str(self.port), "--name", "tiny-random"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chatloom serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.base_url + "/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"chatloom serve did not come up in {timeout} s")
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def chatloom_serve(tmp_path, bundled_tokenizer_path):
    server = ServeProcess(make_tiny_model_dir(tmp_path / "tiny", bundled_tokenizer_path))
    try:
        yield server
    finally:
        server.stop()


def test_browser_flow_project_prompt_draft_rank_export(tmp_path, chatloom_serve, monkeypatch):
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setattr(auth, "hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    monkeypatch.setenv("CHATLOOM_LABEL_DRAFT_MAX_TOKENS", "24")
    db = Database(f"sqlite:///{tmp_path / 'label.db'}")
    with db.session() as s:
        for name, role in [("ada", "admin"), ("lee", "labeler"), ("max", "labeler"), ("rev", "reviewer")]:
            auth.add_user(s, name, role, PW)
    shots = tmp_path / "screens"
    shots.mkdir()
    prompt_text = "How do I <b>reverse</b> a list in Python?"
    suffix = "\n\nEdited by max: use xs[::-1]."

    with LiveServer(create_app(db)) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                    "--disable-background-networking", "--disable-component-update", "--disable-sync"])

        def session(name):
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(30_000)
            page.goto(base + "/login")
            page.fill("input[name=username]", name)
            page.fill("input[name=password]", PW)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/tasks")
            return page

        def shot(page, name):
            page.screenshot(path=str(shots / f"{len(list(shots.iterdir())):02d}-{name}.png"), full_page=True)

        # the login page itself
        anon = browser.new_page()
        anon.goto(base + "/login")
        assert anon.locator("input[type=hidden][name^=csrf]").count() == 1
        shot(anon, "login")

        # admin creates the project, pointing drafts at `chatloom serve`
        ada = session("ada")
        ada.goto(base + "/admin")
        ada.fill("#new-project input[name=name]", "browser")
        ada.fill("#new-project input[name=draft_base_url]", chatloom_serve.base_url)
        ada.fill("#new-project input[name=draft_model]", "tiny-random")
        ada.click("#new-project button[type=submit]")
        ada.wait_for_url("**/admin/projects/*")
        expect(ada.locator("main > h1")).to_have_text("browser")
        shot(ada, "admin-project")
        project_url = ada.url

        ada.click("#settings summary")  # the draft endpoint, tokenizer and queue settings of the project
        expect(ada.locator("#project-settings select[name=draft_endpoint]")).to_be_visible()
        shot(ada, "project-settings")

        # lee writes a prompt; the queue shows each project's progress and what each task type is
        lee = session("lee")
        expect(lee.locator("section.project .progress")).to_contain_text("replies")
        expect(lee.locator("#task-types")).to_contain_text("order the replies")
        shot(lee, "tasks")
        lee.click("section.project button[data-kind=prompt]")
        lee.wait_for_url("**/tasks/*")
        expect(lee.locator("#instructions")).to_contain_text("Helpful")
        lee.fill("#text", prompt_text)
        shot(lee, "write-prompt")
        lee.click("#submit-button")
        expect(lee.locator("#notice")).to_contain_text("Saved message")

        # max drafts a reply with the model, edits it, watches the token preview, submits
        mx = session("max")
        mx.click("section.project button[data-kind=reply]")
        mx.wait_for_url("**/tasks/*")
        expect(mx.locator(".msg.user .text")).to_have_text(prompt_text)
        assert mx.locator(".msg .text b").count() == 0  # markup in the prompt is shown as text
        chatloom_serve.ready()
        mx.click("#draft-button")
        expect(mx.locator("#draft-status")).to_contain_text("draft from tiny-random", timeout=60_000)
        draft = mx.input_value("#text")
        mx.locator("#text").press("End")
        mx.locator("#text").press("Control+End")
        mx.keyboard.insert_text(suffix)
        final = mx.input_value("#text")
        assert final == draft + suffix
        expect(mx.locator("#preview-counts")).to_contain_text("supervised", timeout=60_000)
        supervised_js = "() => Array.from(document.querySelectorAll('#preview-tokens .tok.sup')).map(e => e.textContent).join('')"
        mx.wait_for_function(f"() => ({supervised_js})().includes('use xs[::-1].')", timeout=60_000)  # debounced refresh
        sup_text = mx.evaluate(supervised_js)
        assert "max: use xs[::-1]." in sup_text and sup_text.endswith("<|im_end|>")
        shot(mx, "reply-with-draft")
        mx.click("#submit-button")
        expect(mx.locator("#notice")).to_contain_text("Saved message")

        # ada writes a second reply so there is something to rank
        ada.goto(base + "/tasks")
        ada.click("section.project button[data-kind=reply]")
        ada.wait_for_url("**/tasks/*")
        ada.fill("#text", "Use reversed(xs), or xs.reverse() to reverse in place.")
        ada.click("#submit-button")
        expect(ada.locator("#notice")).to_contain_text("Saved message")

        # the reviewer ranks max's reply first
        rev = session("rev")
        rev.click("section.project button[data-kind=rank]")
        rev.wait_for_url("**/tasks/*")
        candidates = rev.locator(".candidate")
        expect(candidates).to_have_count(2)
        ids = [int(candidates.nth(i).get_attribute("data-message")) for i in range(2)]
        texts = [candidates.nth(i).locator(".text").inner_text() for i in range(2)]
        assert [rev.locator(f"select[name=rank_{i}]").input_value() for i in ids] == ["", ""]  # none preselected
        max_id = ids[texts.index(next(t for t in texts if "Edited by max" in t))]
        other = next(i for i in ids if i != max_id)
        rev.select_option(f"select[name=rank_{max_id}]", "1")
        rev.select_option(f"select[name=rank_{other}]", "2")
        shot(rev, "rank")
        rev.click("#submit-button")
        expect(rev.locator("#notice")).to_contain_text("Ranking saved")

        # ... and reviews a message (never one of their own: they have none)
        rev.click("section.project button[data-kind=review]")
        rev.wait_for_url("**/tasks/*")
        rev.check("input[name=quality][value='4']")
        assert rev.locator("input[name=should_have_refused]").count() == 0  # a prompt is not an assistant reply
        rev.check("input[name=harmless]")
        shot(rev, "review")
        rev.click("#submit-button")
        expect(rev.locator("#notice")).to_contain_text("Review saved")

        # a message picked by hand: the review button is a form (a POST), not a link
        rev.goto(base + "/messages/1")
        expect(rev.locator("#review-this button")).to_be_visible()
        shot(rev, "message")

        # the admin sees stats and exports
        ada.goto(base + "/admin")
        expect(ada.locator("#labeler-stats")).to_contain_text("max")
        shot(ada, "admin-stats")
        exported = ada.request.get(project_url + "/export?threads=best")
        assert exported.status == 200
        lines = [json.loads(x) for x in exported.text().splitlines()]
        browser.close()

    assert len(lines) == 1
    conv = lines[0]
    assert [m["content"] for m in conv["messages"]] == [prompt_text, final.replace("\r\n", "\n")]
    meta = conv["meta"]
    assert meta["authors"] == ["labeler:lee", "labeler:max"]
    assert meta["draft"]["model"] == "tiny-random"
    assert meta["draft"]["edit_chars"] == levenshtein(draft, final) == len(suffix)
    assert meta["messages"][1]["draft"]["text"] == draft and meta["messages"][1]["rank_score"] == 1.0
    names = sorted(x.name for x in shots.iterdir())
    assert len(names) == 10 and all((shots / n).stat().st_size > 5000 for n in names)
    print(f"screenshots in {shots}: {names}")
