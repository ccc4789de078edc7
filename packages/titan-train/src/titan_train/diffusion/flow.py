"""Rectified flow: x_t = (1 - t) x0 + t noise, the model predicts the velocity noise - x0.

Every random number a sample needs (its noise, its timestep, whether its captions are dropped) is
drawn from a generator seeded by (run seed, sample id, purpose), on the CPU. The data loader gives
each sample its position in the run's global stream as its id, so a sample meets the same noise
whatever the data-parallel layout, the batch split or the device: layouts train identically, and a
resumed run redraws exactly what the uninterrupted one drew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from titan_models.flux.sampling import shift_mu, shift_time

TRAIN, VALIDATION, SAMPLE = 0, 1, 2  # purposes: training steps, validation loss, sampled images
_M = (1 << 63) - 1


@dataclass(frozen=True)
class FlowSettings:
    timestep_sampling: str = "logit_normal"   # "uniform" | "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_shift: bool = True
    cfg_prob: float = 0.0                     # per caption encoding (T5, CLIP independently)


def sample_seed(seed: int, sample_id: int, purpose: int) -> int:
    """A 63-bit seed per (run seed, sample, purpose): splitmix-style mixing, so nearby ids and
    seeds give unrelated streams."""
    x = (seed * 0x9E3779B97F4A7C15 + sample_id * 0xBF58476D1CE4E5B9 + purpose * 0x94D049BB133111EB) & _M
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & _M
    return x ^ (x >> 29)


@dataclass
class Draws:
    noise: torch.Tensor        # [B, *latent_shape], float32 on the CPU
    t: torch.Tensor            # [B] in (0, 1)
    drop_t5: torch.Tensor      # [B] bool: replace this sample's T5 encoding by the empty caption's
    drop_clip: torch.Tensor    # [B] bool: the same for CLIP


def draw(sample_ids, seed: int, purpose: int, latent_shape: tuple[int, ...], image_tokens: int,
         s: FlowSettings) -> Draws:
    noise, t, drops = [], [], []
    ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
    for sid in ids:
        g = torch.Generator().manual_seed(sample_seed(seed, int(sid), purpose))
        u = torch.rand(3, generator=g, dtype=torch.float64)
        if s.timestep_sampling == "uniform":
            ti = u[0]
        else:  # logit-normal: a normal through the sigmoid (from the uniform by the inverse CDF)
            z = math.sqrt(2) * torch.erfinv(2 * u[0].clamp(1e-7, 1 - 1e-7) - 1)
            ti = torch.sigmoid(s.logit_mean + s.logit_std * z)
        t.append(ti)
        drops.append(u[1:] < s.cfg_prob)
        noise.append(torch.randn(latent_shape, generator=g))
    tt = torch.stack(t).clamp(1e-5, 1 - 1e-5)
    if s.time_shift:  # Flux's resolution shift, as its sampler's schedule (t is inside (0, 1) here)
        tt = shift_time(tt, shift_mu(image_tokens))
    d = torch.stack(drops)
    return Draws(torch.stack(noise), tt.float(), d[:, 0], d[:, 1])


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity) for clean latents x0 [B, ...] and times t [B]."""
    tb = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - tb) * x0 + tb * noise, noise - x0
