"""A GGUF file's metadata (its key/value header), read without the tensors and without the `gguf` package.

Loading a GGUF model dequantizes every tensor (tens of seconds for a 270M model on a small CPU); what a run needs to
know before that, such as whether the file carries a chat template at all, is in the header. `gguf.GGUFReader` parses
the whole file, including every token string into numpy arrays (seconds for a 262k vocabulary); this walks the header
once and keeps only the scalar and string values, skipping arrays (their strings are stepped over, not decoded).
Layout (GGUF v2/v3): b"GGUF", uint32 version, uint64 tensor count, uint64 key/value count, then per key: a string
(uint64 length + UTF-8 bytes), a uint32 type and the value; an array is a uint32 element type, a uint64 count and the
elements. All little-endian.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """Not a GGUF file, or its header is cut short or malformed."""


def read_metadata(path: str | Path) -> dict:
    """The header's key -> value for scalar and string values (arrays are skipped: their keys map to None)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as e:  # an empty file cannot be mapped
            raise GGUFError(f"{path}: not a GGUF file (empty)") from e
    with data:
        return _parse(path, data)


def _parse(path: Path, data) -> dict:
    if data[:4] != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (it does not start with b'GGUF')")
    pos = 4

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise GGUFError(f"{path}: GGUF header cut short at byte {pos}")
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        if pos + n > len(data):
            raise GGUFError(f"{path}: GGUF header cut short at byte {pos} (a string of {n} bytes)")
        pos += n
        return bytes(data[pos - n:pos]).decode("utf-8", errors="replace")

    def skip(kind: int, count: int) -> None:
        nonlocal pos
        if kind in _FIXED:
            pos += struct.calcsize(_FIXED[kind]) * count
        elif kind == _STRING:
            for _ in range(count):
                (n,) = struct.unpack_from("<Q", data, pos)
                pos += 8 + n
        else:
            raise GGUFError(f"{path}: GGUF array of type {kind} is not supported in the header")
        if pos > len(data):
            raise GGUFError(f"{path}: GGUF header cut short (an array runs past the end)")

    version = take("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    take("<Q")  # tensor count
    out: dict = {}
    for _ in range(take("<Q")):
        key, kind = string(), take("<I")
        if kind in _FIXED:
            out[key] = take(_FIXED[kind])
        elif kind == _STRING:
            out[key] = string()
        elif kind == _ARRAY:
            element, count = take("<I"), take("<Q")
            skip(element, count)
            out[key] = None
        else:
            raise GGUFError(f"{path}: GGUF value of type {kind} (key {key!r}) is not a known type")
    return out


def chat_template(path: str | Path) -> str | None:
    """The file's `tokenizer.chat_template`, or None when it has none."""
    return read_metadata(path).get("tokenizer.chat_template") or None
