"""The quickstart's `report.html`: one self-contained page telling the story of the run.

Loss curves (the training loop's own pictures, inlined), the before/after table with the acceptance bars (every rate
with its 95% interval and n, the difference with its paired p-value), the base model continuing documents next to the
SFT model, the same held-out prompts answered by both, what the SFT model imitates (its answers next to the closest
training answers, when the run made the analysis), one training example in the token view (which tokens are
supervised), timings, and the commands to chat with and serve the result.
"""

from __future__ import annotations

from pathlib import Path

from ..evals.report import answers_html, imitation_html, metrics_html
from ..report_html import cell, esc, page, png_file_img, table


def inline_png(path: Path) -> str:
    return png_file_img(path, f"{path.parent.name} loss", style="max-width:560px")


def token_view_html(model_dir: Path, protocol_name: str) -> str:
    from .. import protocols
    from ..conversation import load
    from ..protocols import view
    from ..tokenizers import load_tokenizer
    from .dataset import TRAIN_PATH

    proto = protocols.get(protocol_name, load_tokenizer(model_dir))
    example = next(c for c in load(TRAIN_PATH) if "multiturn" in c.meta.get("tags", []) and "arithmetic" in c.meta["tags"])
    view_page = view.to_html([(example, proto.render(example))], proto, title="one training example")
    return (f"<iframe srcdoc=\"{esc(view_page)}\" style='width:100%;height:420px;border:1px solid #ddd'>"
            f"</iframe>")


def continuations_html(continuations: dict[str, list[tuple[str, str]]]) -> str:
    labels = list(continuations)
    rows = [[cell(prompt, "reply"), *(cell(continuations[k][i][1], "reply") for k in labels)]
            for i, (prompt, _) in enumerate(continuations[labels[0]])]
    return table(["document start", *(f"{k} continues" for k in labels)], rows)


def imitation_section(im: dict | None) -> str:
    if not im:
        return ""
    return ("<h2>What the SFT model imitates</h2><p>An assistant's answer is a statistical imitation of what its "
            "labelers wrote. Below, the SFT model answers prompts taken from its own training set and the held-out "
            "prompts; under each answer is the closest answer in the training set. Recitation on prompts it was "
            "trained on is memorisation; on held-out prompts it shows how much of the new answers is the labelers' "
            f"phrasing reused.</p>{imitation_html(im)}")


def write_report(path: Path, *, reports: list[dict], base_dir: Path, sft_dir: Path, continuations: dict,
                 timings: dict, plan: dict, protocol: str, seed: int = 0) -> Path:
    from ..evals import acceptance

    sft = reports[-1]
    bars = acceptance(sft)
    missed = [k for k, ok in bars.items() if ok is False]
    verdict = ("All acceptance bars met by the SFT model." if not missed else
               f"Acceptance bars missed by the SFT model: {', '.join(missed)}.")
    timing = table(None, [[k, cell(f"{v:.0f} s", "num")] for k, v in timings.items()])
    commands = (f"chatloom chat --model {sft_dir}\n"
                f"chatloom serve --model {sft_dir} --port 8000\n"
                f"chatloom eval --model {sft_dir} --compare {base_dir}")
    body = f"""
<p>A base model that only continues documents becomes an assistant that answers in turns, knows its name, does
<code>2+2</code>, refuses what it should and stops when it is done, because it was trained on conversations with the same
next-token objective. Base: <code>{esc(str(base_dir))}</code>; SFT model: <code>{esc(str(sft_dir))}</code>
(protocol <code>{esc(protocol)}</code>, seed {seed}).</p>
<h2>Before and after, on the held-out set</h2>{metrics_html(reports)}<p><b>{esc(verdict)}</b></p>
<h2>Loss curves</h2><div>{inline_png(Path(base_dir) / 'loss.png')}{inline_png(Path(sft_dir) / 'loss.png')}</div>
<h2>The base continues documents</h2>{continuations_html(continuations)}
<h2>The same held-out prompts, answered by both</h2>
<p class='meta'>Greedy replies; green: probe passed, red: failed.</p>{answers_html(reports)}
{imitation_section(sft.get("imitation"))}<h2>One training example as tokens</h2>
<p class='meta'>Supervised tokens (the assistant's words and its end-of-turn token) are marked.</p>{token_view_html(sft_dir, protocol)}
<h2>Run</h2>{timing}<p class='meta'>plan: {esc(str(plan))}</p>
<h2>Next</h2><pre>{esc(commands)}</pre>"""
    path.write_text(page("chatloom quickstart", body), encoding="utf-8")
    return path
