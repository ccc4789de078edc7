"""Latents <-> the transformer's token sequence, and the position ids of both streams.

An autoencoder latent z [B, C, H, W] becomes (H/2)(W/2) tokens of C*4 channels: each token a
2x2 patch, channels ordered (c, patch row, patch column), tokens row-major. This is diffusers'
FluxPipeline packing and BFL's rearrange, so latents from either line up with Titan's.
"""

from __future__ import annotations

import torch


def _check_even(h: int, w: int) -> None:
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even (2x2 patches), got {h} x {w}")


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """z [B, C, H, W] -> [B, (H/2)(W/2), C*4]."""
    b, c, h, w = z.shape
    _check_even(h, w)
    x = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x [B, (height/2)(width/2), C*4] -> [B, C, height, width] (height, width: the latent's)."""
    b, n, d = x.shape
    _check_even(height, width)
    if n != (height // 2) * (width // 2) or d % 4:
        raise ValueError(f"{tuple(x.shape)} is not a packed {height} x {width} latent")
    z = x.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, d // 4, height, width)


def image_ids(batch: int, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Position ids [batch, (h/2)(w/2), 3] of a packed h x w latent: (0, patch row, patch column)."""
    _check_even(h, w)
    rows = torch.arange(h // 2, device=device, dtype=torch.float32)
    cols = torch.arange(w // 2, device=device, dtype=torch.float32)
    ids = torch.zeros(h // 2, w // 2, 3, device=device)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(1, -1, 3).expand(batch, -1, -1).contiguous()


def text_ids(batch: int, length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Position ids [batch, length, 3] of text tokens: all zeros (T5 states carry their order)."""
    return torch.zeros(batch, length, 3, device=device)
