"""Write a trained model as a standard Hugging Face model directory that serves with the same protocol everywhere.

safetensors weights + config, the tokenizer with the protocol's control tokens, the chat template as Jinja equal to the
protocol (`chat_template.jinja`), `generation_config.json` whose `eos_token_id` lists the end-of-turn token (the most
common reason fine-tuned models never stop), and `chatloom.json` naming the protocol for chatloom's own tools.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import model_meta


def unwrap(model):
    """The plain transformers model under DDP / torch.compile / PEFT wrappers (LoRA weights merged into a copy)."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and not hasattr(model, "save_pretrained"):
            model = getattr(model, attr)
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    return model


def export_model(model, protocol, out_dir: str | Path, extra: dict | None = None,
                 state_dict: dict | None = None) -> Path:
    """Save model + tokenizer + template + generation config + chatloom.json into `out_dir` (written atomically).

    `state_dict`: the full weights to write instead of the model's own (an FSDP-sharded model's, gathered on rank 0)."""
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model = unwrap(model)
    tok = protocol.tokenizer
    eot, eos = protocol.end_of_turn_id, tok.eos_token_id
    eos_ids = [eot] + ([eos] if eos is not None and eos != eot else [])
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, bos_token_id=tok.bos_token_id, pad_token_id=eos if eos is not None else eot,
        do_sample=False, max_new_tokens=256)
    model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
    hf = getattr(tok, "hf", None)
    if hf is not None:
        hf.chat_template = protocol.chat_template
    tok.save(tmp)
    (tmp / "chat_template.jinja").write_text(protocol.chat_template, encoding="utf-8")
    meta = {"protocol": protocol.name or "hf", "end_of_turn": protocol.end_of_turn, "end_of_turn_id": eot,
            "control_tokens": [t for t in protocol.control_tokens if t], **(extra or {})}
    model_meta.write(tmp, meta)
    if out_dir.exists():  # keep run artefacts (metrics, checkpoints) that live next to the weights
        for item in tmp.iterdir():
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        tmp.rmdir()
    else:
        os.replace(tmp, out_dir)
    return out_dir
