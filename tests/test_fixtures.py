"""The test fixtures are what their README says: every file in tests/fixtures is listed with its source and licence, and
its sha256 matches the table (so a fixture cannot change, or appear, without its provenance)."""

from __future__ import annotations

import hashlib
import re

from .conftest import FIXTURES

ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| (?P<source>[^|]+) \| (?P<licence>[^|]+) \| `(?P<sha>[0-9a-f]{64})` \|$")


def table() -> dict[str, dict]:
    rows = {}
    for line in (FIXTURES / "README.md").read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            rows[m["file"]] = m.groupdict()
    return rows


def test_every_fixture_is_listed_with_source_licence_and_hash():
    rows = table()
    files = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*") if p.is_file() and p != FIXTURES / "README.md")
    assert files, "no fixtures found"
    assert sorted(rows) == files, {"unlisted": sorted(set(files) - set(rows)), "missing": sorted(set(rows) - set(files))}
    for name, row in rows.items():
        assert row["source"].strip() and row["licence"].strip(), name
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == row["sha"], f"{name}: sha256 differs from the README"
