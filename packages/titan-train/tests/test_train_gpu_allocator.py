"""On a CUDA GPU: training.cuda_alloc_conf really reaches torch's caching allocator.

In a fresh process, because allocator settings are process-wide and must come before the first
allocation they should shape."""

import os
import subprocess
import sys

from titan_mesh.testing import requires_gpus

_CHECK = """
import torch
from titan_train.trainer.build_run import _configure_cuda_allocator
_configure_cuda_allocator({conf!r})
x = torch.empty(64 << 20, device="cuda")
print(sorted({{bool(s.get("is_expandable")) for s in torch.cuda.memory_snapshot()}}))
"""


def _segments_expandable(conf: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", _CHECK.format(conf=conf)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@requires_gpus(1)
def test_expandable_segments_applied():
    assert _segments_expandable("expandable_segments:True") == "[True]"


@requires_gpus(1)
def test_empty_setting_leaves_torch_default():
    assert _segments_expandable("") == "[False]"
