"""Tokenizers behind one interface: Hugging Face (`tokenizer.json` / model directories / Hub ids), tiktoken rank files
and chatloom's own byte-level BPE.

The interface exists for one reason: protocols must encode *text* without ever turning it into control tokens, and place
control tokens themselves. So `encode` never parses special tokens (`<|im_end|>` typed by a user is plain text), control
tokens are looked up with `token_id`, and `add_special_tokens` adds a protocol's control tokens when a tokenizer lacks them.
"""

from __future__ import annotations

import bisect
import copy
import json
import os
import threading
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

#: chatloom's own byte-level BPE (8k tokens, a Hugging Face tokenizer directory shipped in the package): the one
#: default tokenizer of every command and API that takes an optional tokenizer (`load_tokenizer(None)` returns it).
BUNDLED_TOKENIZER = Path(__file__).resolve().parent / "assets" / "tokenizer"

# Ids that the tiktokenizer app (and OpenAI's chat format) uses for the chat control tokens of these encodings.
TIKTOKEN_CHAT_IDS = {
    "o200k_base": {"<|im_start|>": 200264, "<|im_end|>": 200265, "<|im_sep|>": 200266},
    "cl100k_base": {"<|im_start|>": 100264, "<|im_end|>": 100265, "<|im_sep|>": 100266},
}


class Tokenizer:
    """Common interface; see HFTokenizer and TiktokenTokenizer."""

    name: str = ""
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None

    # --- text <-> ids (text never becomes a control token)
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Ids of each text; `num_threads` > 1 lets tokenizers whose encode releases the GIL use that many cores."""
        return [self.encode(t) for t in texts]

    def byte_lengths(self) -> list[int] | None:
        """Byte length of every ordinary token by id, for tokenizers whose tokens spell the text byte for byte
        (byte-level BPE); None otherwise. Lets masks find message boundaries by byte offsets."""
        return None

    def encode_with_starts(self, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Ids plus the character offset where each token starts (a token inside a split character gets that character)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    # --- control tokens
    @property
    def special_tokens(self) -> dict[str, int]:
        raise NotImplementedError

    def token_id(self, token: str) -> int | None:
        return self.special_tokens.get(token)

    def add_special_tokens(self, tokens: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return len(self)

    splits_after_newline = False

    def token_text(self, token_id: int) -> str:
        """A token as readable text for views (control tokens by name, bytes decoded with replacement)."""
        for s, i in self.special_tokens.items():
            if i == token_id:
                return s
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    @property
    def eos_token_id(self) -> int | None:
        return self.token_id(self.eos_token) if self.eos_token else None

    @property
    def bos_token_id(self) -> int | None:
        return self.token_id(self.bos_token) if self.bos_token else None


def _char_starts_from_offsets(offsets) -> list[int]:
    return [o[0] for o in offsets]


class HFTokenizer(Tokenizer):
    """A transformers fast tokenizer. Text goes through a private copy of the Rust tokenizer with
    `encode_special_tokens=True`, so control strings in text stay text; the transformers object is kept for saving
    (tokenizer_config.json, added tokens, chat template) and for reference comparisons."""

    def __init__(self, hf, name: str = ""):
        if not getattr(hf, "is_fast", False):
            raise ValueError(f"{name or hf}: chatloom needs a fast (Rust) tokenizer; this one is slow/Python only")
        self.hf = hf
        self.name = name or getattr(hf, "name_or_path", "") or "hf"
        self._text = None
        self._lock = threading.Lock()
        self._refresh()

    def _refresh(self):
        from tokenizers import Tokenizer as RustTokenizer

        rust = RustTokenizer.from_str(self.hf.backend_tokenizer.to_str())
        rust.no_padding()
        rust.no_truncation()
        rust.encode_special_tokens = True
        self._text = rust
        self._special = {t: self.hf.convert_tokens_to_ids(t) for t in self.hf.all_special_tokens}
        for tid, added in self.hf.added_tokens_decoder.items():
            if added.special:
                self._special[added.content] = tid
        self._bytes_cache: dict[int, bytes] = {}
        self._byte_level = _is_byte_level(rust.decoder)
        self._fast = False  # not built yet
        self._lengths = None
        self.bos_token, self.eos_token, self.pad_token = self.hf.bos_token, self.hf.eos_token, self.hf.pad_token

    def encode(self, text: str) -> list[int]:
        return self._text.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        # the tiktoken twin once it exists; building it is worth it from a batch of 64 texts on
        fast = self._fast if self._fast is not False else (self.fast_encoder() if len(texts) >= 64 else None)
        if fast is not None:
            return map_threads(fast.encode_ordinary, texts, num_threads)
        return [e.ids for e in self._text.encode_batch(list(texts), add_special_tokens=False)]

    def byte_lengths(self) -> list[int] | None:
        """Once the tiktoken twin exists (the byte-level BPEs it accepts spell text byte for byte); None before, so
        that rendering one conversation never pays for building it."""
        if self._lengths is None:
            if self._fast is False:
                return None
            self._lengths = _rank_lengths(_mergeable_ranks(self._fast)) if self._fast is not None else []
        return self._lengths or None

    def fast_encoder(self):
        """A tiktoken encoding with the same ids as this tokenizer, for byte-level BPE tokenizers whose pre-tokenizer is
        a regex tiktoken can run (GPT-2, Qwen2, Llama 3 ...). Built once, checked against the Rust tokenizer on a probe
        set (and by property tests); None when the tokenizer is of another kind or any probe differs."""
        if self._fast is False:
            self._fast = _tiktoken_twin(self) or None
        return self._fast

    @property
    def splits_after_newline(self) -> bool:
        """Whether the pre-tokenizer always splits between a newline and a following letter/digit (then text on
        either side can be encoded apart with the same ids). True for the byte-level regex families `fast_encoder` accepts."""
        return self.fast_encoder() is not None

    def encode_with_starts(self, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        return [(e.ids, _char_starts_from_offsets(e.offsets)) for e in self._text.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        if self._byte_level:
            return self.decode_bytes(ids).decode("utf-8", errors="replace")
        return self._text.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        b = self._bytes_cache.get(token_id)
        if b is None:
            piece = self._text.id_to_token(token_id)
            if piece is None:
                raise ValueError(f"token id {token_id} is outside the vocabulary ({len(self)})")
            if token_id in self._special.values() or self._text.get_added_tokens_decoder().get(token_id) is not None:
                b = piece.encode("utf-8")
            elif self._byte_level:
                b = bytes(_BYTE_DECODER[c] for c in piece)
            elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
                b = bytes([int(piece[3:5], 16)])
            else:
                b = piece.replace("\u2581", " ").encode("utf-8")
            self._bytes_cache[token_id] = b
        return b

    @property
    def special_tokens(self) -> dict[str, int]:
        return self._special

    def add_special_tokens(self, tokens: Sequence[str]) -> list[str]:
        missing = [t for t in tokens if t not in self._special]
        if missing:
            from tokenizers import AddedToken

            with self._lock:
                self.hf.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False) \
                    if _accepts_replace_kw(self.hf) else self.hf.add_special_tokens({"additional_special_tokens": missing})
                self._text.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
                for t in missing:
                    self._special[t] = self.hf.convert_tokens_to_ids(t)
                if any(self._text.token_to_id(t) != self._special[t] for t in missing):
                    self._refresh()  # the two copies disagree on ids: rebuild ours from the transformers one
                self._fast = False
                self._lengths = None
        return missing

    def __len__(self) -> int:
        return len(self.hf)

    def save(self, directory: str | Path) -> None:
        self.hf.save_pretrained(str(directory))


GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_PROBES = ["Hello world", "  two  spaces\n\n\nnewlines \t tab", "don't you'll I'M", "123456789 3.14159", "ünïcødé 漢字 🤖🚀",
           "a\u00a0b\u2028c", "<|im_end|> <tool_call> [INST]", "x" * 300, "   ", "\r\n\r\nwindows", "mixed CASE and ÆØÅ",
           "emoji👨‍👩‍👧 zwj", "punct!!!??...", "'s 's 're", "\n\n  \n x", "Ω≈ç√∫˜µ≤≥÷", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]


def _tiktoken_twin(tok: HFTokenizer):
    """Build a tiktoken Encoding equivalent to a byte-level BPE HF tokenizer, or return None."""
    try:
        import tiktoken

        spec = json.loads(tok._text.to_str())
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        if model.get("type") != "BPE" or spec.get("normalizer") or model.get("dropout") or model.get("byte_fallback"):
            return None
        if any(not a.get("special") for a in spec.get("added_tokens") or []):
            return None  # non-special added tokens are matched inside text; tiktoken would not
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
            pattern = GPT2_SPLIT
        elif pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
            split, byte_level = pre["pretokenizers"]
            if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert") \
                    or byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex", True):
                return None
            pattern = (split.get("pattern") or {}).get("Regex")
            if not pattern:
                return None
        else:
            return None
        vocab = model["vocab"]
        ranks = {bytes(_BYTE_DECODER[c] for c in piece): i for piece, i in vocab.items()}
        if len(ranks) != len(vocab):
            return None
        last = -1
        for merge in model.get("merges", []):  # tiktoken merges by the rank of the result: ids must follow merge order
            a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
            merged = vocab.get(a + b)
            if merged is None or merged <= last or merged <= vocab[a] or merged <= vocab[b]:
                return None
            last = merged
        enc = tiktoken.Encoding(f"{tok.name}-twin", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        for probe in _PROBES:
            if enc.encode_ordinary(probe) != tok._text.encode(probe, add_special_tokens=False).ids:
                return None
        return enc
    except Exception:  # noqa: BLE001 - any surprise means: no fast path
        return None


def _rank_lengths(ranks: dict[bytes, int]) -> list[int]:
    lengths = [0] * (max(ranks.values(), default=-1) + 1)
    for token, rank in ranks.items():
        lengths[rank] = len(token)
    return lengths


PARALLEL_MIN_CHARS = 1 << 16  # below this much text one thread is faster than handing work to others
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (pid, threads) -> pool, shared by every tokenizer
_POOL_LOCK = threading.Lock()


def map_threads(encode, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
    """`[encode(t) for t in texts]`, spread over `num_threads` threads when that pays (tiktoken releases the GIL while
    it encodes, so threads use several cores). Texts are cut into contiguous chunks of about equal characters; the
    result is in the order of `texts`."""
    n = len(texts)
    if num_threads <= 1 or n < 2:
        return [encode(t) for t in texts]
    total = sum(map(len, texts))
    if total < PARALLEL_MIN_CHARS:
        return [encode(t) for t in texts]
    key = (os.getpid(), num_threads)  # a forked child (data loader workers) has the pools but not their threads
    with _POOL_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(num_threads, thread_name_prefix="chatloom-encode")
    step = total / (num_threads * 4)  # a few chunks per thread even out texts of very different lengths
    bounds, acc = [0], 0
    for i, t in enumerate(texts):
        acc += len(t)
        if acc >= step * len(bounds) and i + 1 < n:
            bounds.append(i + 1)
    bounds.append(n)
    chunks = [texts[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    out: list[list[int]] = []
    for part in pool.map(lambda chunk: [encode(t) for t in chunk], chunks):
        out += part
    return out


def safe_split(left: str, right: str) -> bool:
    """Whether `left + right` encodes as `encode(left) + encode(right)` for a tokenizer whose `splits_after_newline`
    holds: the regex families never join a single newline with a following visible character."""
    if not left.endswith("\n") or (len(left) > 1 and left[-2].isspace()) or not right:
        return False
    first = right[0]
    return first.isalnum() or (not first.isspace() and unicodedata.category(first)[0] not in "CZ")


def _is_byte_level(decoder) -> bool:
    from tokenizers import decoders

    if decoder is None:
        return False
    if isinstance(decoder, decoders.ByteLevel):
        return True
    return isinstance(decoder, decoders.Sequence) and "ByteLevel" in repr(decoder)


def _accepts_replace_kw(hf) -> bool:
    import inspect

    try:
        return "replace_extra_special_tokens" in inspect.signature(hf.add_special_tokens).parameters
    except (TypeError, ValueError):
        return False


def _bytes_to_unicode() -> dict[int, str]:
    """The byte <-> printable-unicode table of byte-level BPE (GPT-2), needed to turn a token back into its bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in keep]
    return {b: chr(c) for b, c in zip(keep + extra, keep + [256 + i for i in range(len(extra))], strict=True)}


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding built from a local `.tiktoken` rank file (no network); control tokens are tiktoken specials."""

    def __init__(self, encoding, name: str, eos_token: str | None = "<|endoftext|>"):
        self._set_encoding(encoding)
        self.name = name
        self.eos_token = eos_token if eos_token in self._special else None

    def _set_encoding(self, encoding) -> None:
        self.enc = encoding
        # our own map, from tiktoken's public API (a caller changing it cannot corrupt the encoding)
        self._special = {t: encoding.encode_single_token(t) for t in sorted(encoding.special_tokens_set)}
        self._token_lengths = None
        self._byte_lengths = None

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> TiktokenTokenizer:
        import tiktoken
        import tiktoken.load
        import tiktoken_ext.openai_public as public

        path = Path(path)
        name = name or path.name.removesuffix(".tiktoken")
        if name not in public.ENCODING_CONSTRUCTORS:
            raise ValueError(f"{path}: unknown tiktoken encoding {name!r}; known: {sorted(public.ENCODING_CONSTRUCTORS)}")
        ranks = tiktoken.load.load_tiktoken_bpe(str(path))
        with _TIKTOKEN_PATCH_LOCK:  # reuse tiktoken's own definition (regex, specials) with the local ranks
            original = public.load_tiktoken_bpe
            public.load_tiktoken_bpe = lambda *a, **k: ranks
            try:
                spec = public.ENCODING_CONSTRUCTORS[name]()
            finally:
                public.load_tiktoken_bpe = original
        return cls(tiktoken.Encoding(**spec), name)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return map_threads(self.enc.encode_ordinary, texts, num_threads)

    def byte_lengths(self) -> list[int] | None:
        if self._byte_lengths is None:
            self._byte_lengths = _rank_lengths(_mergeable_ranks(self.enc))
        return self._byte_lengths

    @property
    def splits_after_newline(self) -> bool:
        return True  # the OpenAI regexes never join a newline with a following letter or digit

    def encode_with_starts(self, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        out = []
        lengths = self._lengths()
        for text, ids in zip(texts, self.encode_batch(texts), strict=True):
            byte_starts = np.concatenate([[0], np.cumsum(lengths[np.asarray(ids, dtype=np.int64)])[:-1]]) if ids else np.zeros(0, np.int64)
            if text.isascii():
                starts = byte_starts.tolist()
            else:
                char_of_byte = np.repeat(np.arange(len(text)), [len(ch.encode("utf-8")) for ch in text])
                starts = char_of_byte[byte_starts].tolist()
            out.append((ids, starts))
        return out

    def _lengths(self):
        if self._token_lengths is None:
            lengths = np.zeros(self.enc.n_vocab, dtype=np.int64)
            for token, rank in _mergeable_ranks(self.enc).items():
                lengths[rank] = len(token)
            for token, rank in self._special.items():
                lengths[rank] = len(token.encode())
            self._token_lengths = lengths
        return self._token_lengths

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.enc.decode_bytes(list(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self.enc.decode_single_token_bytes(token_id)

    @property
    def special_tokens(self) -> dict[str, int]:
        return self._special

    def add_special_tokens(self, tokens: Sequence[str]) -> list[str]:
        """Adds the missing `tokens` by replacing `self.enc` with a new encoding (the old object is left as it was,
        so copies made by `copy_tokenizer` and callers holding the old encoding do not change)."""
        import tiktoken

        missing = [t for t in tokens if t not in self._special]
        if not missing:
            return []
        specials = dict(self._special)
        known = TIKTOKEN_CHAT_IDS.get(self.name, {})
        ranks = _mergeable_ranks(self.enc)
        for t in missing:
            used = set(specials.values()) | set(ranks.values())
            tid = known.get(t)
            if tid is None or tid in used:
                tid = max(used) + 1
            specials[t] = tid
        self._set_encoding(tiktoken.Encoding(name=f"{self.name}+chat", pat_str=_pattern(self.enc),
                                             mergeable_ranks=ranks, special_tokens=specials))
        return missing

    def __len__(self) -> int:
        return self.enc.n_vocab

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError(
            f"{self.name}: a tiktoken encoding cannot be saved as a Hugging Face tokenizer by chatloom yet; "
            "train with a Hugging Face tokenizer to export a model directory")


_TIKTOKEN_PATCH_LOCK = threading.Lock()


# tiktoken has no public API for an encoding's rank table or split pattern, and chatloom needs both: token byte lengths
# (character offsets for masks) and a new Encoding with the same ranks plus chat control tokens. These two functions
# are the only places that read tiktoken's private attributes; tests/test_layering.py pins what they return.
def _mergeable_ranks(enc) -> dict[bytes, int]:
    return enc._mergeable_ranks


def _pattern(enc) -> str:
    return enc._pat_str


def load_tokenizer(source: str | Path | Tokenizer | None = None) -> Tokenizer:
    """A tokenizer from a model directory, a `tokenizer.json`, a `.tiktoken` file, a tiktoken encoding name whose rank
    file is in the tiktoken cache, or (with network) a Hugging Face Hub id. None (or ""): chatloom's bundled BPE
    (`BUNDLED_TOKENIZER`), a fresh object each call."""
    if isinstance(source, Tokenizer):
        return source
    if source is None or source == "":
        source = BUNDLED_TOKENIZER
    path = Path(str(source))
    if path.suffix == ".tiktoken":
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such tiktoken rank file")
        return TiktokenTokenizer.from_file(path)
    if str(source) in ("o200k_base", "cl100k_base", "r50k_base", "p50k_base"):
        import tiktoken

        return TiktokenTokenizer(tiktoken.get_encoding(str(source)), str(source))
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path.is_file() and path.suffix == ".json":
        config_path = path.with_name("tokenizer_config.json")
        if path.name == "tokenizer.json" and config_path.exists():
            return HFTokenizer(AutoTokenizer.from_pretrained(str(path.parent)), str(path.parent))
        return HFTokenizer(PreTrainedTokenizerFast(tokenizer_file=str(path)), str(path))
    if path.is_dir():
        if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer_config.json in this directory")
        return HFTokenizer(AutoTokenizer.from_pretrained(str(path)), str(path))
    if path.exists():
        raise ValueError(f"{path}: not a tokenizer (expected a model directory, tokenizer.json or .tiktoken file)")
    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(source)), str(source))
    except Exception as e:  # noqa: BLE001 - the Hub gives many error types; the message is what matters
        raise FileNotFoundError(f"{source}: not a local tokenizer file or directory, and not loadable from the Hub ({e})") from e


def copy_tokenizer(tok: Tokenizer) -> Tokenizer:
    """An independent copy, so adding control tokens for one protocol does not change a tokenizer others hold."""
    if isinstance(tok, HFTokenizer):
        return HFTokenizer(copy.deepcopy(tok.hf), tok.name)
    if isinstance(tok, TiktokenTokenizer):
        return TiktokenTokenizer(tok.enc, tok.name, tok.eos_token)
    return copy.deepcopy(tok)


def token_index_at(starts: list[int], char_pos: int) -> int:
    """Index of the first token that contains character `char_pos` (given each token's start character)."""
    i = bisect.bisect_right(starts, char_pos) - 1
    while i > 0 and starts[i - 1] == starts[i]:
        i -= 1
    return max(i, 0)


def train_bpe(files: Sequence[str | Path], vocab_size: int, out_dir: str | Path,
              special_tokens: Sequence[str] = ("<|endoftext|>",), min_frequency: int = 2, show_progress: bool = True) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization) and save it as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = [str(f) for f in files]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such training text file")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"--vocab-size {vocab_size} is below the 256 byte tokens plus {len(special_tokens)} special tokens")
    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    rust.train(files, trainer)
    eos = special_tokens[0] if special_tokens else None
    hf = PreTrainedTokenizerFast(tokenizer_object=rust, bos_token=eos, eos_token=eos, pad_token=eos)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out_dir))
    return HFTokenizer(hf, str(out_dir))
