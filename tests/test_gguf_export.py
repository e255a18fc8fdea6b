"""`chatloom export MODEL_DIR --gguf OUT.gguf`: the file llama.cpp runs must be the model chatloom trained.

Checked against llama.cpp itself (llama-cpp-python, pinned in the `test` extra): the file loads; llama.cpp's
tokenization of a rendered conversation (control tokens parsed, as llama-server does after applying the GGUF's template)
equals chatloom's ids, for unicode / emoji / CJK / digits / whitespace runs and for random text (hypothesis), on every
pre-tokenizer the exporter maps (chatloom's BPE, SmolLM2's vocabulary as its GGUF and as the Hub split it, the Llama 3
and Qwen2 regexes); on a model trained here until it memorised its replies (not random weights, where near-ties flip),
llama.cpp's greedy continuation equals chatloom's engine and its next-token log-probabilities agree within a stated
tolerance, at f16 and at q8_0. Independently of llama.cpp, transformers' own GGUF loader (which undoes llama.cpp's q/k
permutation) gives back the trained logits, and `chatloom check --gguf` passes on the exported file.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from chatloom import Conversation, protocols
from chatloom.check import TYPED, builtin_conversations, has_typed
from chatloom.cli import app
from chatloom.conversation import save
from chatloom.export_gguf import ExportError, export_gguf, plan
from chatloom.tokenizers import BUNDLED_TOKENIZER

from .conftest import FIXTURES, need, require

SMOLLM2_JSON = FIXTURES / "smollm2" / "tokenizer.json"

# Replies the model memorises (> 16 tokens each with the bundled BPE), asked four times each.
FACTS = [("Who keeps the lighthouse?", "The lighthouse is kept by Ada, who counts ships every night."),
         ("What colour is the loom?", "The loom is painted deep green with seven brass pegs."),
         ("Where do the herons sleep?", "The herons sleep on the old mill roof beside the river."),
         ("How many threads are there?", "There are forty two threads of blue wool on the frame."),
         ("What does Omar bake?", "Omar bakes rye bread with caraway seeds every Tuesday morning."),
         ("Which road leads north?", "The gravel road past the orchard leads north to the hills.")]

# Text that pre-tokenizers split differently: digit runs, contractions, whitespace runs and edges, CRLF, scripts
# without spaces, multi-codepoint emoji, combining marks, right-to-left text, code.
TEXTS = ["Hello world! The loom weaves 123 threads in 2024, pi = 3.14159 and 1,000,000.",
         "I'm sure you'LL see they've done it, hasn't she? 'quoted' words",
         "  two  spaces\tand\t\ttabs \n\n  new lines   \r\nCRLF\r\n trailing   ",
         "漢字かなカナ한국어 中文没有空格。日本語の文も。",
         "Emoji: 👩‍💻 🇯🇵 🤖🤖 👍🏽 ❤️ and the family 👨‍👩‍👧‍👦.",
         "naïve café, e\u0301 (combining), Ünïcödé, ß, ǅ, ﬁ ligature",
         "مرحبا بالعالم — שלום עולם — Привет, мир!",
         "```python\ndef f(x):\n    return x ** 2  # 4 spaces\n```\n!!!...???---***",
         "  ", "\n", "a", "1", "123456789012"]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def llama_cpp():
    """llama-cpp-python (.ci/run installs it through the `test` extra: under CI a missing one fails, see conftest)."""
    try:
        import llama_cpp
    except ImportError:
        require(False, "llama-cpp-python (pip install 'chatloom[test]')")
    return llama_cpp


def load_llama(llama_cpp, path, vocab_only: bool = False):
    """A llama.cpp model on one thread, weights not repacked (see `chatloom.llamacpp`); `logits_all` keeps the logits
    of every evaluated token in `.scores`."""
    from chatloom.llamacpp import open_llama

    return open_llama(path, n_ctx=256, n_threads=1, n_batch=256, vocab_only=vocab_only, verbose=False, seed=0,
                      logits_all=True)


def llama_ids(llm, text: str) -> list[int]:
    """llama.cpp's tokenization as llama-server does it after rendering the template: control tokens parsed, BOS
    only when the file asks for it."""
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Llama trained by chatloom's trainer until it repeats its replies (~10 s), exported at f16 and q8_0."""
    from chatloom.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("gguf_export")
    save([Conversation.of(q, a) for q, a in FACTS for _ in range(4)], tmp / "train.jsonl")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from a second thread on a shared CPU
    try:
        train(TrainConfig(out=str(tmp / "model"), model="tiny", data=[str(tmp / "train.jsonl")], max_steps=150,
                          seq_len=128, batch_size=4, lr=1e-2, warmup_steps=5, precision="fp32", progress=False))
    finally:
        torch.set_num_threads(before)
    model_dir = tmp / "model"
    return model_dir, export_gguf(model_dir, tmp / "m.f16.gguf", "f16"), export_gguf(model_dir, tmp / "m.q8_0.gguf", "q8_0")


def model_dir_with(tmp_path, tokenizer_json, pre_tokenizer: dict | None = None, protocol: str = "chatml"):
    """An untrained tiny model directory on a given tokenizer.json (its pre-tokenizer optionally replaced)."""
    from chatloom.train.export import export_model
    from chatloom.train.models import fit_vocab, load_model

    src = tmp_path / "tok"
    src.mkdir(exist_ok=True)
    spec = json.loads(need(tokenizer_json).read_text(encoding="utf-8"))
    if pre_tokenizer is not None:
        spec["pre_tokenizer"] = pre_tokenizer
    (src / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    model, tok = load_model("tiny", tokenizer=src / "tokenizer.json", seed=0)
    proto = protocols.get(protocol, tok)
    fit_vocab(model, len(tok))
    return export_model(model, proto, tmp_path / "model")


def split(regex: str) -> dict:
    """A tokenizer.json pre-tokenizer as Llama 3 and Qwen2 store theirs: one regex split, then bytes to unicode."""
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


SMOLLM_HUB = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}


def tokenizer_variants():
    from chatloom.export_gguf import LLAMA3_REGEX, QWEN2_REGEX

    bundled = BUNDLED_TOKENIZER / "tokenizer.json"
    return {"bundled BPE": (bundled, None, "gpt-2"),
            "SmolLM2 as its GGUF": (SMOLLM2_JSON, None, "gpt-2"),
            "SmolLM2 as the Hub": (SMOLLM2_JSON, SMOLLM_HUB, "smollm"),
            "Llama 3 regex": (bundled, split(LLAMA3_REGEX), "llama-bpe"),
            "Qwen2 regex": (bundled, split(QWEN2_REGEX), "qwen2")}


# ------------------------------------------------------------------------------------------------ llama.cpp
def test_the_file_loads_with_its_metadata(trained, llama_cpp):
    model_dir, f16, q8 = trained
    proto = protocols.for_model(model_dir)
    for path in (f16, q8):
        llm = load_llama(llama_cpp, path)
        meta = llm.metadata
        assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.pre"] == "gpt-2"
        assert meta["tokenizer.chat_template"] == (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
        assert llm.token_eos() == proto.end_of_turn_id == int(meta["tokenizer.ggml.eos_token_id"])
        assert llm.n_vocab() == len(proto.tokenizer)
    assert q8.stat().st_size < 0.6 * f16.stat().st_size


def test_llama_cpp_tokenizes_rendered_conversations_like_chatloom(trained, llama_cpp):
    """The rendered text (the protocol's, and the GGUF template's as llama-cpp-python applies it) tokenized by
    llama.cpp with control tokens parsed gives exactly the ids chatloom trains on."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model_dir, f16, _ = trained
    proto = protocols.for_model(model_dir)
    llm = load_llama(llama_cpp, f16, vocab_only=True)
    meta = llm.metadata
    tok = proto.tokenizer
    formatter = Jinja2ChatFormatter(meta["tokenizer.chat_template"], eos_token=tok.token_text(llm.token_eos()),
                                    bos_token=tok.token_text(llm.token_bos()))
    convs = [c for c in builtin_conversations(proto.control_tokens) if not has_typed(c, TYPED)]
    convs += [Conversation.of(t, t[::-1]) for t in TEXTS]
    assert len(convs) > 10
    for conv in convs:
        assert llama_ids(llm, proto.text(conv)) == proto.render(conv).ids, conv
        messages = [{"role": m.role, "content": m.content} for m in conv.messages[:-1]]
        prompt = formatter(messages=messages).prompt
        assert llama_ids(llm, prompt) == proto.prompt(Conversation(conv.messages[:-1])), conv


@pytest.fixture(scope="module")
def trained_vocab(trained):
    """llama.cpp's vocabulary of the f16 export (loaded once, closed after the module) and chatloom's tokenizer."""
    try:
        import llama_cpp
    except ImportError:
        require(False, "llama-cpp-python (pip install 'chatloom[test]')")
    llm = load_llama(llama_cpp, trained[1], vocab_only=True)
    yield llm, protocols.for_model(trained[0]).tokenizer
    llm.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_llama_cpp_tokenizes_any_text_like_chatloom(trained_vocab, text):
    llm, tokenizer = trained_vocab
    assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tokenizer.encode(text)


@pytest.mark.parametrize("variant", list(tokenizer_variants()))
def test_pre_tokenizer_choice_splits_like_the_hf_tokenizer(variant, tmp_path, llama_cpp):
    """Each pre-tokenizer the exporter knows gets the `tokenizer.ggml.pre` under which llama.cpp's ids equal the HF
    tokenizer's on text where the splits differ (digits, contractions, whitespace runs, scripts, emoji)."""
    from chatloom.tokenizers import load_tokenizer

    tokenizer_json, pre_tokenizer, want = tokenizer_variants()[variant]
    model_dir = model_dir_with(tmp_path, tokenizer_json, pre_tokenizer)
    assert plan(model_dir).pre == want
    path = export_gguf(model_dir, tmp_path / "m.gguf")
    llm = load_llama(llama_cpp, path, vocab_only=True)
    hf = load_tokenizer(model_dir)
    for text in TEXTS:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == hf.encode(text), text


def test_a_wrong_pre_tokenizer_is_caught(tmp_path, llama_cpp):
    """The comparison above can fail: a Llama 3 style tokenizer (digits in runs of at most three, a punctuation mark
    joined to the following word) exported with GPT-2's pre-tokenizer makes llama.cpp split text otherwise."""
    from chatloom.export_gguf import LLAMA3_REGEX
    from chatloom.tokenizers import load_tokenizer

    model_dir = model_dir_with(tmp_path, BUNDLED_TOKENIZER / "tokenizer.json", split(LLAMA3_REGEX))
    llm = load_llama(llama_cpp, export_gguf(model_dir, tmp_path / "wrong.gguf", pre="gpt-2"), vocab_only=True)
    hf = load_tokenizer(model_dir)
    differ = [t for t in TEXTS if llm.tokenize(t.encode(), add_bos=False, special=False) != hf.encode(t)]
    assert len(differ) >= 3, differ


def llama_greedy(llm, prompt: list[int], n: int, stops: set[int]) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy continuation (argmax of its logits, no sampler) and its logits after the prompt."""
    llm.reset()
    llm.eval(prompt)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in stops:
            break
        llm.eval([token])
    return out, first


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


# Stated tolerances: max |log p(llama.cpp) - log p(transformers fp32)| (the trained model: over the 16 most likely next
# tokens after each prompt). Measured: trained model f16 0.003, q8_0 0.07; random tiny llama / mistral / qwen2 at f16
# about 0.009, where the same file without the q/k permutation is off by ~6.
F16_TOL, Q8_TOL = 0.05, 0.25
PROMPTS = [q for q, _ in FACTS] + ["Who counts the herons?", "Tell me about the loom."]


@pytest.mark.parametrize("which,tol", [("f16", F16_TOL), ("q8_0", Q8_TOL)])
def test_llama_cpp_continues_like_chatloom_engine(trained, llama_cpp, which, tol):
    """On the trained model, llama.cpp's greedy continuation of each prompt equals chatloom's engine for the first 16
    tokens, and the next-token log-probabilities agree within the stated tolerance."""
    from transformers import AutoModelForCausalLM

    from chatloom.engine import Engine, SamplingParams

    model_dir, f16, q8 = trained
    llm = load_llama(llama_cpp, f16 if which == "f16" else q8)
    engine = Engine.from_pretrained(model_dir, dtype="fp32")
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    stops = set(engine.stop_ids)
    convs = [Conversation.of(p) for p in PROMPTS]
    ours = engine.generate(convs, SamplingParams(temperature=0, max_tokens=16))
    worst = 0.0
    for conv, done in zip(convs, ours, strict=True):
        prompt = engine.protocol.prompt(conv)
        theirs, logits = llama_greedy(llm, prompt, 16, stops)
        assert theirs == done.ids[:16], (conv.messages[0].content, theirs, done.ids)
        with torch.no_grad():
            want = hf(torch.tensor([prompt])).logits[0, -1].double().numpy()
        top = np.argsort(-want)[:16]
        worst = max(worst, float(np.abs(log_softmax(logits)[top] - log_softmax(want)[top]).max()))
    assert worst < tol, worst
    for (_, reply), done in zip(FACTS, ours, strict=False):  # the premise: a model that learned, not random weights
        assert reply.startswith(done.text) and len(done.text) > 20, (reply, done.text)


def tiny_family_dir(tmp_path, family: str):
    """A random tiny model of a Llama-family architecture, weights at a scale where attention matters (a q/k layout
    error moves the logits), saved as chatloom saves models (chatml on the bundled BPE)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    from chatloom.tokenizers import load_tokenizer
    from chatloom.train.export import export_model

    proto = protocols.get("chatml", load_tokenizer(None), copy=True)
    shape = dict(vocab_size=len(proto.tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256, initializer_range=0.1)
    config = {"llama, tied embeddings": lambda: LlamaConfig(**shape, tie_word_embeddings=True),
              "mistral": lambda: MistralConfig(**shape, tie_word_embeddings=False, sliding_window=None),
              "qwen2": lambda: Qwen2Config(**shape, tie_word_embeddings=True)}[family]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.5 * torch.randn(p.shape))
    return export_model(model, proto, tmp_path / "model"), model.eval(), proto


@pytest.mark.parametrize("family,arch", [("llama, tied embeddings", "llama"), ("mistral", "llama"), ("qwen2", "qwen2")])
def test_llama_cpp_logits_equal_transformers_per_family(family, arch, tmp_path, llama_cpp):
    """Every architecture the exporter maps (tied output, q/k/v biases and no q/k permutation for qwen2): llama.cpp's
    log-probabilities at every position of a conversation equal transformers' within F16_TOL."""
    model_dir, model, proto = tiny_family_dir(tmp_path, family)
    path = export_gguf(model_dir, tmp_path / "m.gguf")
    llm = load_llama(llama_cpp, path)
    assert llm.metadata["general.architecture"] == arch
    ids = proto.render(Conversation.of("Where do the herons sleep?", "On the old mill roof, 漢字 🤖.")).ids
    llm.reset()
    llm.eval(ids)
    got = np.array(llm.scores[:len(ids)], dtype=np.float64)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].double().numpy()
    diff = max(float(np.abs(log_softmax(g) - log_softmax(w)).max()) for g, w in zip(got, want, strict=True))
    assert diff < F16_TOL, diff


# ------------------------------------------------------------------------------------------------ without llama.cpp
@pytest.mark.parametrize("which,atol", [("f16", 0.02), ("q8_0", 0.15)])
def test_transformers_reads_back_the_trained_logits(trained, which, atol):
    """An independent reader of the layout: transformers' GGUF loader un-permutes q/k as llama.cpp's converter
    permutes them, so the logits it computes from the file equal the trained model's (within the type's rounding)."""
    from transformers import AutoModelForCausalLM

    model_dir, f16, q8 = trained
    path = f16 if which == "f16" else q8
    back = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    proto = protocols.for_model(model_dir)
    ids = torch.tensor([proto.render(Conversation.of(q, a)).ids for q, a in FACTS[:1]])
    with torch.no_grad():
        got, want = back(ids).logits, ref(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


def test_chatloom_check_passes_on_the_export(trained):
    model_dir, f16, q8 = trained
    for path in (f16, q8):
        res = CliRunner().invoke(app, ["check", str(model_dir), "--gguf", str(path), "--json"])
        assert res.exit_code == 0, res.output
        rows = {r["check"]: r["result"] for r in json.loads(res.output)["rows"]}
        assert rows["GGUF chat template"] == rows["GGUF end of generation"] == rows["ids: chatloom = GGUF"] == "ok"


def test_cli_export_writes_the_file(trained, tmp_path):
    model_dir, f16, _ = trained
    out = tmp_path / "sub" / "cli.gguf"
    res = CliRunner().invoke(app, ["export", str(model_dir), "--gguf", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == f16.read_bytes()  # deterministic: the same directory gives the same file
    assert not list(out.parent.glob(".*export*"))  # no temporary file left


def test_bad_input_gets_a_clear_error(trained, tmp_path):
    model_dir, _, _ = trained
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tmp_path / "nope"), "--gguf", str(tmp_path / "x.gguf")])
    assert res.exit_code == 2 and "no such model directory" in res.output

    gpt2 = shutil.copytree(model_dir, tmp_path / "gpt2")
    config = json.loads((gpt2 / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (gpt2 / "config.json").write_text(json.dumps(config))
    res = runner.invoke(app, ["export", str(gpt2), "--gguf", str(tmp_path / "x.gguf")])
    assert res.exit_code == 2 and "GPT2LMHeadModel" in res.output and "Llama family" in res.output
    assert not (tmp_path / "x.gguf").exists()

    res = runner.invoke(app, ["export", str(model_dir), "--gguf", str(tmp_path / "x.gguf"), "--type", "q4_k"])
    assert res.exit_code == 2 and "q4_k" in res.output


def test_unknown_or_sentencepiece_tokenizers_are_refused(trained, tmp_path):
    model_dir, _, _ = trained
    odd = shutil.copytree(model_dir, tmp_path / "odd")
    spec = json.loads((odd / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (odd / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match="pre-tokenizer Whitespace has no known llama.cpp equal"):
        export_gguf(odd, tmp_path / "x.gguf")
    spec["model"]["byte_fallback"] = True
    (odd / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match="SentencePiece-style"):
        export_gguf(odd, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
