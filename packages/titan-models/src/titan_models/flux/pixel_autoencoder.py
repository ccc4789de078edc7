"""A parameter-free stand-in for the autoencoder, for the debug model: latents are the image at
1/4 resolution folded 2x2 into channels, so the Flux packing, the 8x spatial factor and the 16
latent channels stay exactly as with the real one, and a debug run's samples decode to blocky but
recognizable pictures (a random learned autoencoder decodes to noise).

    encode: [B, 3, H, W] in [-1, 1] -> 4x4 average pooling [B, 3, H/4, W/4] -> space-to-depth 2x2
            [B, 12, H/8, W/8] -> 4 zero channels appended -> [B, 16, H/8, W/8], scaled
    decode: the inverse up to the pooling (nearest 4x upsampling)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PixelAutoEncoderArgs:
    z_channels: int = 16
    scale_factor: float = 2.0   # flat-colored images pool to values near +-1: x2 for latents of unit scale


class PixelAutoEncoder(nn.Module):
    def __init__(self, args: PixelAutoEncoderArgs | None = None) -> None:
        super().__init__()
        self.args = args or PixelAutoEncoderArgs()
        if self.args.z_channels < 12:
            raise ValueError(f"z_channels = {self.args.z_channels}: the pixel autoencoder needs >= 12 (3 colors x 2x2)")

    def init_weights(self) -> None:
        """No weights."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        small = F.avg_pool2d(x, 4)
        z = F.pixel_unshuffle(small, 2)
        pad = self.args.z_channels - z.shape[1]
        return torch.cat([z, z.new_zeros(z.shape[0], pad, *z.shape[2:])], 1) * self.args.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        small = F.pixel_shuffle(z[:, :12] / self.args.scale_factor, 2)
        return F.interpolate(small, scale_factor=4, mode="nearest")
