"""chatloom synth against `chatloom serve` (the real engine and server) running a tiny random model on loopback:
N conversations with the planned turn counts. Skipped until chatloom.serve is in this build."""

from __future__ import annotations

import json

from chatloom.synth import FilterConfig, ModelSpec, RetryPolicy, Sampling, Seed, SynthConfig, plan, run

from .synth_fake_api import serve


def tiny_model_dir(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatloom import protocols

    tok = protocols.resolve("chatml").tokenizer  # chatloom's bundled BPE with the protocol's control tokens
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512))
    out = tmp_path / "tiny"
    model.save_pretrained(out)
    tok.save(out)
    (out / "chatloom.json").write_text(json.dumps({"protocol": "chatml"}))
    return out


def test_synth_against_chatloom_serve_with_a_tiny_model(tmp_path):
    from chatloom.engine import Engine
    from chatloom.serve.app import create_app

    engine = Engine.from_pretrained(tiny_model_dir(tmp_path))
    out = tmp_path / "serve.jsonl"
    with serve(create_app(engine, model_name="tiny")) as url:
        # A random model writes random text: keep every non-empty turn (the filters are tested elsewhere) and keep the
        # prompts inside the tiny model's 512 positions.
        cfg = SynthConfig(seeds=[Seed("topic", "tides"), Seed("question", "Why is the sky blue?")],
                          user_model=ModelSpec.parse(f"tiny@{url}"), assistant_model=ModelSpec.parse(f"tiny@{url}"),
                          n=3, out=out, turns=(1, 2), concurrency=2, progress=False,
                          user_sampling=Sampling(temperature=1.0, max_tokens=8),
                          assistant_sampling=Sampling(temperature=1.0, max_tokens=8),
                          filters=FilterConfig(min_chars=1, enabled=frozenset()), max_attempts=5,
                          retry=RetryPolicy(max_retries=1, timeout=60, backoff_base=0.05))
        result = run(cfg)
    assert result.complete, result.summary["this_run"]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and len({r["id"] for r in records}) == 3
    for r in records:
        info = r["meta"]["synth"]
        assert len(r["messages"]) == 2 * plan(cfg, info["index"]).turns
        assert info["user_model"]["name"] == "tiny"
    usage = result.summary["usage"]
    assert usage["assistant"]["completion_tokens"] > 0 and usage["user"]["prompt_tokens"] > 0
