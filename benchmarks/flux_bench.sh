#!/usr/bin/env bash
# Flux-dev shape cut to N blocks (split 1:2 as flux-dev's: N = 18 keeps 6 double + 12 single), trained
# on one GPU from a latent cache of random encodings (T5-XXL width 4096 x 512 tokens, CLIP 768, 256 px latents 16 x 32 x 32): the transformer's
# speed without the frozen encoders (which a real run would precompute the same way).
#   bash benchmarks/flux_bench.sh OUT_DIR [N_BLOCKS] [LOCAL_BATCH] [extra titan-train args]
set -euo pipefail
out=${1:?output folder}; n=${2:-18}; b=${3:-16}; shift $(( $# < 3 ? $# : 3 ))
cache=${FLUX_CACHE:-/tmp/flux_cache}
if [ ! -f "$cache/index.json" ]; then
  python3 - "$cache" <<'PY'
import sys, torch, titan_data
def encode(images, captions):  # random stand-ins of the real encoders' outputs, seeded per batch
    g = torch.Generator().manual_seed(len(captions[0]))
    b = images.shape[0]
    return {"latents": torch.randn(b, 16, 32, 32, generator=g).bfloat16(),
            "t5": torch.randn(b, 512, 4096, generator=g).bfloat16(), "clip": torch.randn(b, 768, generator=g).bfloat16()}
titan_data.encode_to_cache("synthetic_shapes", encode, sys.argv[1], resolution=256, batch_size=32, max_samples=256)
PY
fi
python3 -m titan_train --model.name flux --model.flavor flux-dev --model.n_layers "$n" \
  --training.dataset latent_cache --training.dataset_path "$cache" --diffusion.img_size 256 \
  --encoder.t5_encoder none --encoder.clip_encoder none --encoder.autoencoder_flavor debug \
  --encoder.max_t5_encoding_len 512 --training.local_batch_size "$b" --training.steps 18 --training.seed 0 \
  --optimizer.lr 1e-4 --lr_scheduler.warmup_steps 5 --metrics.log_freq 1 --metrics.enable_tensorboard false \
  --validation.enable false --job.dump_folder "$out" "$@"
