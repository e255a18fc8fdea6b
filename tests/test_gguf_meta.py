"""`gguf_meta` reads a GGUF header's values like the `gguf` package's full reader does (the independent reference), and
`chatloom train sft --protocol hf` on a GGUF without a chat template stops from the header, before any weight loads."""

from __future__ import annotations

import pytest

from chatloom import gguf_meta
from chatloom.conversation import Conversation, save

from .gguf_tiny import write_tiny_llama_gguf

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_meta")
    bare, templated = root / "bare.gguf", root / "templated.gguf"
    write_tiny_llama_gguf(bare, seed=1)
    write_tiny_llama_gguf(templated, seed=1, chat_template=TEMPLATE, eos_token_id=3)
    return bare, templated


def test_metadata_equals_the_gguf_packages_reader(ggufs):
    from gguf import GGUFReader, GGUFValueType

    for path in ggufs:
        ours = gguf_meta.read_metadata(path)
        reader = GGUFReader(str(path))
        assert list(ours) == [k for k in reader.fields if not k.startswith("GGUF.")]
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            if field.types[0] == GGUFValueType.ARRAY:
                assert ours[key] is None
            else:
                want = field.contents()
                assert ours[key] == pytest.approx(want) if isinstance(want, float) else ours[key] == want, key
    bare, templated = ggufs
    assert gguf_meta.chat_template(bare) is None
    assert gguf_meta.chat_template(templated) == TEMPLATE
    assert gguf_meta.read_metadata(templated)["tokenizer.ggml.eos_token_id"] == 3


def test_not_gguf_and_cut_short_files_are_refused(ggufs, tmp_path):
    bare, _ = ggufs
    for name, content in [("empty.gguf", b""), ("text.gguf", b"hello, not a model"),
                          ("cut.gguf", bare.read_bytes()[:300])]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(gguf_meta.GGUFError, match=name):
            gguf_meta.read_metadata(tmp_path / name)


def test_protocol_hf_on_a_gguf_without_template_stops_before_loading(ggufs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from chatloom.cli import app
    from chatloom.train import loop

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the template check")

    monkeypatch.setattr(loop, "load_model", no_loading)
    bare, _ = ggufs
    data = tmp_path / "convs.jsonl"
    save([Conversation.of("Hi?", "Hello.")], data)
    res = CliRunner().invoke(app, ["train", "sft", "--model", str(bare), "--protocol", "hf", "--data", str(data),
                                   "--out", str(tmp_path / "out"), "--max-steps", "1"])
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.split())
    assert str(bare.name) in flat and "no chat template" in flat and "--protocol chatml" in flat
    assert not (tmp_path / "out").exists()


def test_protocol_hf_on_a_gguf_with_a_template_passes_the_check(ggufs):
    from chatloom.train.config import TrainConfig
    from chatloom.train.loop import check_template_source

    _, templated = ggufs
    check_template_source(TrainConfig(model=str(templated), protocol="hf", data=["x.jsonl"]))  # no error
