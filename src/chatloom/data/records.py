"""Reading source files record by record: `(line, record)` pairs from JSONL, a JSON list or Parquet.

Its own module because both the importers (`importers.py`) and the OpenAssistant tree reader (`oasst.py`) read files
this way, and the importers call the tree reader: with the reader here, the two depend on it and not on each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..conversation import ValidationError


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, record) from JSONL, a JSON list (line = element number), or Parquet (line = row number).
    A line that is not JSON yields a ValidationError in place of the record."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
            for row in batch.to_pylist():
                n += 1
                yield n, row
        return
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        yield from enumerate(data if isinstance(data, list) else [data], 1)
        return
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, ValidationError(f"not valid JSON ({e.msg} at column {e.colno})", field="(line)")
