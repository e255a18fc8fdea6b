"""The HTML reports (mixture, evaluation, quickstart) pinned against pages written before their shell moved into
`chatloom.report_html`: the pages must stay the same document (tags, attributes, text; a picture is compared as
"a valid PNG data URI", since matplotlib's bytes differ between versions)."""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

PINS = Path(__file__).parent / "pins" / "reports"  # chatloom's own pages, not third-party fixtures
PNG_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_png() -> bytes:
    """A valid 1x1 PNG, built from the format's definition (signature, IHDR, IDAT, IEND with CRCs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (PNG_MAGIC + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def pictures_replaced(page: str, volatile: bool) -> str:
    """Every inline PNG must decode to a PNG; volatile ones (matplotlib output) are replaced by a marker."""
    def check(m):
        data = base64.b64decode(m.group(1))
        assert data.startswith(PNG_MAGIC)
        return "data:image/png;base64,<png>" if volatile else m.group(0)
    return PNG_URI.sub(check, page)


class Events(HTMLParser):
    """The document as a list of events: quote style and attribute order do not count, tags, attributes and text do."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.events: list = []

    def handle_starttag(self, tag, attrs):  # an iframe's srcdoc is a page of its own: compared the same way
        self.events.append(["start", tag, sorted([k, events(v) if k == "srcdoc" else v] for k, v in attrs)])

    def handle_endtag(self, tag):
        self.events.append(["end", tag])

    def handle_data(self, data):
        if self.events and self.events[-1][0] == "text":
            self.events[-1][1] += data
        else:
            self.events.append(["text", data])

    def handle_decl(self, decl):
        self.events.append(["decl", decl.lower()])


def events(page: str) -> list:
    parser = Events()
    parser.feed(page)
    parser.close()
    return parser.events


def check_pinned(name: str, page: str) -> None:
    pin = PINS / f"{name}.html"
    assert pin.is_file(), f"missing pin {pin}"
    assert events(page) == events(pin.read_text(encoding="utf-8"))


def mixture_ledgers():
    from chatloom.data.mix import SourceLedger

    a = SourceLedger("alpha <a>", ["a.jsonl"], {"fraction": 0.5}, rows_in=10, rows_out=4, tokens_out=120,
                     supervised_tokens_out=60, dropped=Counter(sampled_out=5, exact_duplicate=1),
                     licenses=Counter({"CC-BY-4.0": 4}), lengths_in=[30] * 10, lengths_out=[30, 28, 31, 31],
                     turns_out=Counter({2: 3, 4: 1}))
    b = SourceLedger("beta & co", ["b.jsonl"], {"count": 3}, rows_in=5, rows_out=3, tokens_out=90,
                     supervised_tokens_out=40, dropped=Counter(sampled_out=2), licenses=Counter({"(unstated)": 3}),
                     lengths_in=[30] * 5, lengths_out=[29, 30, 31], turns_out=Counter({2: 3}))
    ledger = {"recipe": "recipe <1>.yaml", "recipe_hash": "0123456789abcdef", "seed": 3, "protocol": "chatml",
              "tokenizer": "bundled", "rows": {"train": 6, "validation": 1}, "shards": {}, "rejected_records": 2,
              "sources": [a.to_dict(), b.to_dict()]}
    return ledger, [a, b]


def test_mixture_report_is_the_pinned_page(tmp_path):
    from chatloom.data.report import write_report

    ledger, ledgers = mixture_ledgers()
    write_report(tmp_path / "report.html", ledger, ledgers)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3
    check_pinned("mixture", pictures_replaced(page, volatile=True))


def eval_reports() -> list[dict]:
    def sample(kind, reply, passed, stopped=True):
        return {"id": f"{kind}-1", "kind": kind, "prompt": [{"role": "system", "content": "be brief"},
                                                              {"role": "user", "content": f"a {kind} <question>?"}],
                "expect": "2+2 = 4 & more", "reply": reply, "passed": passed, "stopped": stopped,
                "finish_reason": "stop" if stopped else "length"}
    kinds = ["identity", "arithmetic", "refusal", None]
    base = {"label": "base", "model": "runs/base", "data": "heldout.jsonl", "n": 4,
            "metrics": {"heldout_loss": 3.25, "protocol_adherence": 0.0, "identity_accuracy": 0.0,
                        "arithmetic_exact_match": None, "refusal_rate": 0.0, "false_refusal_rate": 0.5},
            "samples": [sample(k, "rambling <|im_end|> on", False, stopped=False) for k in kinds]}
    sft = {"model": "runs/sft", "data": "heldout.jsonl", "n": 4,
           "metrics": {"heldout_loss": 0.75, "protocol_adherence": 1.0, "identity_accuracy": 0.95,
                       "arithmetic_exact_match": 0.5, "refusal_rate": 0.9, "false_refusal_rate": 0.2},
           "samples": [sample(k, "2+2 = 4", k != "refusal") for k in kinds]}
    return [base, sft]


def test_evaluation_report_is_the_pinned_page():
    from chatloom.evals import to_html

    page = to_html(eval_reports(), title="base <vs> sft")
    check_pinned("evaluation", page)
    assert page.startswith("<!doctype html>")


@pytest.fixture
def model_dirs(tmp_path, bundled_tokenizer_path):
    from chatloom import load_tokenizer

    base, sft = tmp_path / "base", tmp_path / "sft"
    for d in (base, sft):
        d.mkdir()
        load_tokenizer(bundled_tokenizer_path).save(d)
    (base / "loss.png").write_bytes(tiny_png())  # the SFT directory has no picture: the page says so
    return base, sft


def test_quickstart_report_is_the_pinned_page(tmp_path, model_dirs):
    from chatloom.quickstart.report import write_report

    base, sft = model_dirs
    reports = eval_reports()
    path = write_report(tmp_path / "report.html", reports=reports, base_dir=base, sft_dir=sft,
                        continuations={"base": [("Once upon a <time>", " there was & a kite")],
                                       "sft": [("Once upon a <time>", " a reply")]},
                        timings={"pretraining": 12.4, "sft": 7.0}, plan={"steps": 3}, protocol="chatml")
    page = path.read_text(encoding="utf-8").replace(str(tmp_path), "TMP")
    assert f"data:image/png;base64,{base64.b64encode(tiny_png()).decode()}" in page
    check_pinned("quickstart", page)


def test_pins_are_real_pages():
    """The pins themselves: complete documents with the tables they are meant to pin (a pin cannot be an empty file)."""
    for name, needle in [("mixture", "beta &amp; co"), ("evaluation", "held-out loss"), ("quickstart", "The base continues")]:
        text = (PINS / f"{name}.html").read_text(encoding="utf-8")
        ev = events(text)
        assert ev[0] == ["decl", "doctype html"] and needle in text and ["end", "html"] in ev
        json.dumps(ev)


def test_the_shared_pieces_escape_text_and_keep_markup(tmp_path):
    from chatloom.report_html import Html, cell, page, png_data_uri, png_file_img, table

    assert table(["a<b", "n"], [["x & y", cell("1", "num")], [Html("<i>kept</i>"), "'q'"]]) == (
        "<table><tr><th>a&lt;b</th><th>n</th></tr><tr><td>x &amp; y</td><td class='num'>1</td></tr>"
        "<tr><td><i>kept</i></td><td>&#x27;q&#x27;</td></tr></table>")
    assert table(None, []) == "<table></table>"
    assert events(page("t<1>", "<p>x</p>", css="p{}")) == [
        ["decl", "doctype html"], ["start", "html", []], ["start", "head", []], ["start", "meta", [["charset", "utf-8"]]],
        ["start", "title", []], ["text", "t<1>"], ["end", "title"], ["start", "style", []], ["text", "p{}"],
        ["end", "style"], ["end", "head"], ["start", "body", []], ["start", "h1", []], ["text", "t<1>"], ["end", "h1"],
        ["start", "p", []], ["text", "x"], ["end", "p"], ["end", "body"], ["end", "html"]]
    assert "no picture at" in png_file_img(tmp_path / "none.png", "x")
    (tmp_path / "p.png").write_bytes(tiny_png())
    img = png_file_img(tmp_path / "p.png", "a 'loss'", style="max-width:1px")
    assert events(img) == [["start", "img", [["alt", "a 'loss'"], ["src", png_data_uri(tiny_png())],
                                              ["style", "max-width:1px"]]]]
