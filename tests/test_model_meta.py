"""`chatloom.json`, the note chatloom writes next to a model it exports, read the same way by every tool: the protocol
a model directory was trained with (protocols.for_model, the training loop's clash check, the engine's meta)."""

from __future__ import annotations

import json

import pytest

from chatloom import protocols


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from chatloom.train.models import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("m") / "tiny", protocol="llama3", config="tiny")


def test_export_writes_the_meta_every_reader_sees(model_dir):
    from chatloom.engine import Engine
    from chatloom.train.models import model_protocol

    meta = json.loads((model_dir / "chatloom.json").read_text(encoding="utf-8"))
    assert meta["protocol"] == "llama3" and meta["end_of_turn"] == "<|eot_id|>"
    assert model_protocol(model_dir) == model_protocol(str(model_dir)) == "llama3"
    assert protocols.for_model(model_dir).name == "llama3"
    assert Engine.from_pretrained(model_dir).meta == meta


def test_without_meta_the_readers_fall_back(tmp_path, model_dir):
    import shutil

    from chatloom.engine import Engine
    from chatloom.train.models import model_protocol

    plain = tmp_path / "plain"
    shutil.copytree(model_dir, plain)
    (plain / "chatloom.json").unlink()
    assert model_protocol(plain) is None and model_protocol("tiny") is None and model_protocol(tmp_path / "nope") is None
    proto = protocols.for_model(plain)  # the exported chat template
    assert isinstance(proto, protocols.TemplateProtocol)
    assert Engine.from_pretrained(plain).meta == {}


def test_a_meta_naming_no_builtin_means_the_template(tmp_path, model_dir):
    import shutil

    from chatloom.train.models import model_protocol

    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    (other / "chatloom.json").write_text(json.dumps({"protocol": "hf"}))
    assert model_protocol(other) == "hf"
    assert isinstance(protocols.for_model(other), protocols.TemplateProtocol)


def test_one_home_reads_and_writes_it(tmp_path):
    """Only `chatloom.model_meta` names the file in code; a broken file is an error naming it, not a KeyError later."""
    import ast
    from pathlib import Path

    from chatloom import model_meta

    src = Path(model_meta.__file__).parent
    naming = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                    for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                    if isinstance(node, ast.Constant) and node.value == "chatloom.json")
    assert naming == ["model_meta.py"]
    assert model_meta.read(tmp_path) == {} and model_meta.protocol(tmp_path) is None
    model_meta.write(tmp_path, {"protocol": "chatml", "end_of_turn": "<|im_end|>"})
    assert model_meta.read(tmp_path) == {"protocol": "chatml", "end_of_turn": "<|im_end|>"}
    (tmp_path / "chatloom.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"chatloom\.json: not valid JSON"):
        model_meta.protocol(tmp_path)
    (tmp_path / "chatloom.json").write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        model_meta.read(tmp_path)
