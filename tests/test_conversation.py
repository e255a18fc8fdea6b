"""The Conversation type: dict round trip, stable ids, JSONL/Parquet files, and every validation error path."""

from __future__ import annotations

import json

import pytest

from chatloom import Conversation, Rejects, ValidationError, load, save

SEED = {"messages": [{"role": "system", "content": "You are Loom, a helpful assistant."},
                     {"role": "user", "content": "What is 2+2?"},
                     {"role": "assistant", "content": "2+2 = 4", "train": True},
                     {"role": "user", "content": "What if it was * instead of +?"},
                     {"role": "assistant", "content": "2*2 = 4, same as 2+2!"}],
        "meta": {"source": "labeling:project-3", "license": "CC-BY-4.0"}}


def test_from_dict_to_dict_round_trip_and_stable_id():
    c = Conversation.from_dict(SEED)
    again = Conversation.from_dict(c.to_dict())
    assert again.to_dict() == c.to_dict()
    assert c.id.startswith("c-") and c.id == Conversation.from_dict(SEED).id
    other = json.loads(json.dumps(SEED))
    other["messages"][2]["content"] = "2+2 = 5"
    assert Conversation.from_dict(other).id != c.id
    assert Conversation.from_dict({**SEED, "id": "mine"}).id == "mine"


def test_plain_openai_messages_line_is_valid():
    c = Conversation.from_dict({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                             {"role": "assistant", "content": "hello"}]})
    assert c.messages[0].content == "hi" and c.meta == {}


@pytest.mark.parametrize("record, field, words", [
    ({"messages": []}, "messages", "non-empty"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role"),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content", "empty content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "must be a string"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]}, "messages[1].role", "first"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages[1].role", "two user"),
    ({"messages": [{"role": "user", "content": "a", "train": True}]}, "messages[0].train", "only assistant"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "train": "yes"}]},
     "messages[1].train", "true or false"),
    ({"messages": [{"role": "user", "content": "a", "colour": 1}]}, "messages[0]", "unknown key"),
    ({"messages": [{"role": "user", "content": "a"}], "extra": 1}, "(record)", "unknown key"),
    ({"messages": [{"role": "system", "content": "s"}]}, "messages", "only a system"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}]}, "messages[1].role", "tool result"),
    ({"messages": [{"role": "user", "content": "a"}], "meta": []}, "meta", "object"),
    ({"messages": ["hello"]}, "messages[0]", "object"),
    ({"messages": [{"role": "assistant", "content": "a", "tool_calls": [{"function": {}}]}]},
     "messages[0].tool_calls[0]", "function.name"),
])
def test_validation_errors_name_the_field(record, field, words):
    with pytest.raises(ValidationError) as e:
        Conversation.from_dict(record)
    assert e.value.field == field and words in str(e.value)


def test_require_assistant_end():
    with pytest.raises(ValidationError, match="must end with an assistant turn"):
        Conversation.from_dict({"messages": [{"role": "user", "content": "a"}]}, require_assistant_end=True)


def test_jsonl_errors_name_file_and_line_and_skip_writes_rejects(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps(SEED)
    path.write_text("\n".join([good, '{"messages": [{"role": "user", "content": "a"}', good,
                               json.dumps({"messages": [{"role": "wizard", "content": "x"}]})]) + "\n")
    with pytest.raises(ValidationError) as e:
        list(load(path))
    assert f"{path}:2" in str(e.value) and "not valid JSON" in str(e.value)
    rejects = Rejects(tmp_path / "rejects.jsonl")
    kept = list(load(path, on_error="skip", rejects=rejects))
    assert len(kept) == 2 and rejects.count == 2
    lines = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in lines] == [2, 4] and lines[1]["field"] == "messages[0].role"


def test_parquet_round_trip(tmp_path):
    convs = [Conversation.from_dict(SEED),
             Conversation.from_dict({"messages": [{"role": "user", "content": "weather?"},
                                                  {"role": "assistant", "content": "",
                                                   "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {"city": "Oslo"}}}]},
                                                  {"role": "tool", "content": "sunny", "tool_call_id": "1"},
                                                  {"role": "assistant", "content": "Sunny.", "train": False}],
                                     "tools": [{"type": "function", "function": {"name": "w"}}]})]
    for suffix in ("parquet", "jsonl"):
        path = tmp_path / f"c.{suffix}"
        assert save(convs, path) == 2
        back = list(load(path))
        assert [c.to_dict() for c in back] == [c.to_dict() for c in convs]
