"""What a run leaves for people: metrics.jsonl (one JSON per step / evaluation), loss.png, and the run card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_digest(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files in name order (prefix of 16 hex digits)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


class Metrics:
    """Append-only JSONL log; on resume it is cut back to the checkpoint's step so the log matches the weights."""

    def __init__(self, path: Path, enabled: bool = True, keep_until_step: int | None = None):
        self.path, self.enabled, self.rows = path, enabled, []
        if path.exists():
            if keep_until_step is not None:
                self.rows = [r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())
                             if r.get("step", 0) <= keep_until_step]
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")

    def log(self, **row) -> None:
        self.rows.append(row)
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def plot_loss(rows: list[dict], path: Path, title: str = "chatloom training") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (per supervised token)", lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_run_card(out: Path, card: dict) -> None:
    (out / "run_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    cfg, final, data = card.get("config", {}), card.get("final", {}), card.get("data", {})
    lines = [f"# chatloom run: {cfg.get('mode')} of `{cfg.get('model')}`", "",
             f"Protocol `{cfg.get('protocol')}`, {card.get('steps')} optimizer steps in {card.get('seconds', 0):.1f} s "
             f"on {card.get('device')} ({card.get('world_size', 1)} process(es), {card.get('precision')}).", "",
             "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in final.items()]
    lines += ["", "## Data", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in data.items()]
    lines += ["", "## Config", "", "```json", json.dumps(cfg, indent=2), "```", "", "![loss](loss.png)", ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
