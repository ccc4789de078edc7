"""Sampling from a Flux model: BFL's shifted time schedule and Euler steps of the rectified flow.

Convention (training and sampling alike): x_t = (1 - t) * x0 + t * noise, the model predicts the
velocity v = noise - x0, and t = 1 is pure noise. So dx/dt = v and one Euler step from t to
t_prev < t is x_{t_prev} = x_t + (t_prev - t) * v.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def shift_mu(image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """BFL's resolution-dependent shift: mu linear in the image's token count, base_shift at 256
    tokens and max_shift at 4096 (larger images need more noise to destroy the same structure)."""
    return base_shift + (max_shift - base_shift) / (4096 - 256) * (image_seq_len - 256)


def shift_time(t, mu: float):
    """t -> e^mu / (e^mu + 1/t - 1) (a float or a tensor of t in (0, 1)): toward t = 1 for mu > 0."""
    e = math.exp(mu)
    return e / (e + (1 / t - 1))


def time_schedule(steps: int, image_seq_len: int, shift: bool = True, *, base_shift: float = 0.5,
                  max_shift: float = 1.15) -> list[float]:
    """steps + 1 times from 1 down to 0. shift: BFL's shift (shift_mu / shift_time), which spends
    more steps at high noise for longer sequences."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    times = [1.0 - i / steps for i in range(steps + 1)]
    if not shift:
        return times
    mu = shift_mu(image_seq_len, base_shift, max_shift)
    return [0.0 if t <= 0 else 1.0 if t >= 1 else shift_time(t, mu) for t in times]


def _batch(value, batch: int, device: torch.device) -> torch.Tensor | None:
    """A scalar or [B] value as a float32 [B] tensor (float32 whatever the latents' dtype: the
    timestep embedding is computed in float32)."""
    if value is None:
        return None
    return torch.as_tensor(value, dtype=torch.float32, device=device).expand(batch).contiguous()


@torch.no_grad()
def denoise(model: nn.Module, noise_packed: torch.Tensor, img_ids: torch.Tensor, txt: torch.Tensor,
            txt_ids: torch.Tensor, y: torch.Tensor, schedule: list[float], *, guidance: float | torch.Tensor | None = None,
            cfg_scale: float | None = None, uncond: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Integrate from noise_packed [B, L, C] at schedule[0] to schedule[-1] with Euler steps; returns
    the packed latents. guidance: the guidance scale of a guidance-distilled model (float or [B]).
    cfg_scale with uncond = (txt_uncond, y_uncond): classifier-free guidance,
    v = v_uncond + cfg_scale * (v_cond - v_uncond) (one extra forward per step)."""
    if (cfg_scale is None) != (uncond is None):
        raise ValueError("classifier-free guidance needs both cfg_scale and uncond=(txt_uncond, y_uncond)")
    x = noise_packed
    b = x.shape[0]
    g = _batch(guidance, b, x.device)
    if uncond is not None:
        txt_u, y_u = uncond
        ids_u = txt_ids if txt_u.shape[1] == txt_ids.shape[1] else txt_ids.new_zeros(b, txt_u.shape[1], 3)
    for t, t_prev in zip(schedule[:-1], schedule[1:]):
        tt = _batch(t, b, x.device)
        v = model(x, img_ids, txt, txt_ids, tt, y, guidance=g)
        if uncond is not None:
            v_u = model(x, img_ids, txt_u, ids_u, tt, y_u, guidance=g)
            v = v_u + cfg_scale * (v - v_u)
        x = x + (t_prev - t) * v
    return x
