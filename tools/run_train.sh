#!/usr/bin/env bash
# Launch titan-train on one node with torchrun.
#   NGPU=8 CONFIG_FILE=my.toml tools/run_train.sh --training.steps 100
# NGPU (default 8, or 1 without GPUs), CONFIG_FILE (a file or a shipped name, default llama3_debug),
# LOG_RANK (ranks whose output is shown, default 0); extra arguments are passed to titan-train.
set -euo pipefail

if [[ -z "${NGPU:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then NGPU=$(nvidia-smi -L | wc -l); else NGPU=1; fi
fi
CONFIG_FILE=${CONFIG_FILE:-llama3_debug}
LOG_RANK=${LOG_RANK:-0}

# Record-stream-free NCCL frees TP's async buffers sooner (lower memory), as torchtitan does.
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

exec torchrun --nproc_per_node="${NGPU}" --rdzv_backend c10d --rdzv_endpoint="localhost:0" \
  --local-ranks-filter "${LOG_RANK}" \
  -m titan_train --config "${CONFIG_FILE}" "$@"
