"""Training: one loop for SFT (conversations with loss masks) and pretraining (documents), packing without cross-talk,
Hugging Face checkpoints with the protocol's chat template, atomic resumable checkpoints, DDP or FSDP (`--fsdp`) under
torchrun.

    from chatloom.train import TrainConfig, train
    result = train(TrainConfig(model="tiny", data=["convs.jsonl"], protocol="chatml", out="runs/sft"))
"""

from .config import TrainConfig
from .data import DataError
from .loop import Run, TrainResult, train
from .models import CONFIGS, ModelNotFound, load_model, make_model_dir

__all__ = ["TrainConfig", "train", "TrainResult", "Run", "DataError", "ModelNotFound", "CONFIGS", "load_model",
           "make_model_dir"]
