"""Published Flux shapes (BFL's FLUX.1), plus a CPU model."""

from __future__ import annotations

from titan_models.flux.args import FluxArgs

FLAVORS: dict[str, FluxArgs] = {
    # ~1.8M parameters, CPU-trainable: 4 heads of 32 (RoPE axes 8 + 12 + 12), 2 double + 2 single
    # blocks; in_channels 64 = the debug autoencoder's 16 z channels x a 2x2 patch; context 64 and
    # vector 32 match the "tiny" T5 / CLIP encoders (titan_models.flux.encoders).
    "flux-debug": FluxArgs(in_channels=64, out_channels=64, vec_in_dim=32, context_in_dim=64, hidden_size=128,
                           num_heads=4, depth=2, depth_single_blocks=2, axes_dim=(8, 12, 12),
                           guidance_embed=False),
    # black-forest-labs/FLUX.1-dev: guidance-distilled (embeds the guidance scale), 11.90B.
    "flux-dev": FluxArgs(guidance_embed=True),
    # black-forest-labs/FLUX.1-schnell: same shape without the guidance embedder, 11.89B.
    "flux-schnell": FluxArgs(guidance_embed=False),
}
