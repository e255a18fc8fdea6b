"""Which characters of a text each of its tokens covers, exactly, down to the byte.

A byte-level BPE splits one character into several tokens (emoji, CJK) and may even join the last bytes of one character
with the first bytes of the next. Character start offsets cannot describe that: several tokens share a start, and a token
that begins inside the previous character looks as if it did not touch the next one. So spans come from first
principles when the tokenizer allows it: the bytes of the tokens, concatenated, are the UTF-8 bytes of the text, which
gives every token's byte range; a token then covers every character one of its bytes belongs to. Tokenizers whose tokens
do not spell the text byte for byte (SentencePiece with a prefix space, normalizers) fall back to the tokenizer's character
start offsets.

`spans(...)[k] = (first, end)`: token k covers characters `first .. end-1`; it overlaps a character range [a, b) iff
`first < b and end > a`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from ..tokenizers import Tokenizer


def token_spans(tokenizer: Tokenizer, text: str, ids: Sequence[int], starts: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Character span of each token of `text` (encoded as `ids`); `starts` are the tokenizer's character start offsets,
    used only when the token bytes do not spell the text (then they are required)."""
    if not ids:
        return []
    token_bytes = tokenizer.token_bytes
    pieces = [token_bytes(i) for i in ids]
    raw = text.encode("utf-8")
    if b"".join(pieces) == raw:
        return _from_bytes(text, raw, pieces)
    if starts is None:
        raise ValueError("token_spans: the tokens do not spell the text byte for byte and no character offsets were given")
    return _from_starts(len(text), starts)


def _from_bytes(text: str, raw: bytes, pieces: list[bytes]) -> list[tuple[int, int]]:
    out = []
    pos = 0
    if len(raw) == len(text):  # ASCII: bytes are characters
        for b in pieces:
            out.append((pos, pos + len(b)))
            pos += len(b)
        return out
    char_of_byte = []
    for c, ch in enumerate(text):
        char_of_byte.extend([c] * len(ch.encode("utf-8")))
    for b in pieces:
        end = pos + len(b)
        out.append((char_of_byte[pos], char_of_byte[end - 1] + 1) if b else (char_of_byte[min(pos, len(raw) - 1)],) * 2)
        pos = end
    return out


def _from_starts(n_chars: int, starts: Sequence[int]) -> list[tuple[int, int]]:
    out = []
    last = len(starts) - 1
    for k, s in enumerate(starts):
        if k < last:
            nxt = starts[k + 1]
            end = s + 1 if nxt == s else nxt  # several tokens inside one character each cover that character
        else:
            end = n_chars
        out.append((s, max(end, s + 1)))
    return out


def byte_ends(lengths: Sequence[int], ids: Sequence[int]) -> list[int] | None:
    """End byte offset of each token, from a table of token byte lengths by id (`Tokenizer.byte_lengths`): for
    tokenizers whose tokens spell the text, token k covers bytes `ends[k-1] .. ends[k]-1`. None when an id is not in
    the table."""
    try:
        return list(accumulate(map(lengths.__getitem__, ids)))
    except IndexError:
        return None
