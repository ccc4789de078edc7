"""titan-ckpt: distributed, async, resharding checkpoints on torch DCP, with HF safetensors interop."""

from .errors import CheckpointError
from .manager import CheckpointManager, create_seed_checkpoint
from .states import ModelState, OptimizerState
from .weights import load_model_weights

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "ModelState",
    "OptimizerState",
    "create_seed_checkpoint",
    "load_model_weights",
]
