"""titan-ckpt: distributed, async, resharding checkpoints on torch DCP, with HF safetensors interop."""

from .errors import CheckpointError
from .manager import CheckpointManager, checkpoint_info, create_seed_checkpoint, list_checkpoints
from .mxfp4 import dequantize_hf_checkpoint, dequantize_mxfp4
from .states import ModelState, OptimizerState
from .weights import load_model_weights

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "ModelState",
    "OptimizerState",
    "checkpoint_info",
    "create_seed_checkpoint",
    "dequantize_hf_checkpoint",
    "dequantize_mxfp4",
    "list_checkpoints",
    "load_model_weights",
]
