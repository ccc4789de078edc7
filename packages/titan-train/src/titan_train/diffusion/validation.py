"""Validation of a diffusion run: the held-out rectified-flow loss (fixed noise and timesteps per
validation sample, so the number is comparable from one evaluation to the next), and a few images
sampled from the first validation captions with fixed seeds, written as PNGs (and to TensorBoard)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from titan_mesh import dist_mean
from torch import nn

from titan_train.diffusion import flow
from titan_train.diffusion.task import FlowMatching


@dataclass(frozen=True)
class SampleSettings:
    count: int            # images per evaluation (0: none)
    steps: int            # Euler steps
    cfg_scale: float      # classifier-free guidance (1: off)
    folder: Path          # PNGs go to folder/step-N/
    writer: bool          # this rank writes (global rank 0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [N, 3, H, W] on the CPU."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def save_pngs(images: torch.Tensor, captions: list[str], folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, (img, cap) in enumerate(zip(images, captions)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(cap + "\n")


@torch.no_grad()
def sample(model: nn.Module, objective: FlowMatching, captions: list[str], ids: torch.Tensor,
           s: SampleSettings) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] for `captions`, from noise seeded by (run seed, id); the
    schedule is shifted when training shifts its timesteps (diffusion.time_shift)."""
    from titan_models.flux import image_ids, pack_latents, text_ids, unpack_latents
    from titan_models.flux.sampling import denoise, time_schedule

    cond = objective.cond
    t5, clip = cond._encode_text(captions)
    h, w = objective.latent_hw
    z = cond.autoencoder.args.z_channels
    d = flow.draw(ids.cpu(), objective.seed, flow.SAMPLE, (z, h, w), objective.image_tokens,
                  flow.FlowSettings(timestep_sampling="uniform", time_shift=False))
    noise = pack_latents(d.noise).to(cond.device, cond.dtype)
    n = len(captions)
    uncond = None
    if s.cfg_scale != 1.0:
        e5, eclip = cond.empty
        uncond = (e5.expand(n, -1, -1), eclip.expand(n, -1))
    guidance = None if objective.guidance is None else torch.full((n,), objective.guidance, device=cond.device)
    packed = denoise(model, noise, image_ids(n, h, w, cond.device), t5, text_ids(n, t5.shape[1], cond.device), clip,
                     time_schedule(s.steps, objective.image_tokens, shift=objective.settings.time_shift),
                   guidance=guidance,
                     cfg_scale=s.cfg_scale if uncond is not None else None, uncond=uncond)
    packed = packed.full_tensor() if hasattr(packed, "full_tensor") else packed
    return cond.decode(unpack_latents(packed, h, w))


def make_validator(build_loader: Callable[[], object], model: nn.Module, objective: FlowMatching, loss_mesh,
                   train_context, *, batches: int, samples: SampleSettings, step_of: Callable[[], int],
                   metrics, ema=None) -> Callable[[], float]:
    """validate() -> the mean validation loss over `batches` batches (-1: the whole split), after
    writing this step's samples."""

    loader = build_loader()
    start = loader.state_dict()  # every evaluation reads the same batches

    @torch.no_grad()
    def validate() -> float:
        total, count, first = 0.0, 0, None
        loader.load_state_dict(start)
        for i, batch in enumerate(loader):
            if 0 <= batches <= i:
                break
            first = first or batch
            with train_context([]):
                total += float(objective(model, batch, batch["sample_ids"], flow.VALIDATION))
            count += 1
        # the loss is the trained weights'; the samples come from the EMA when there is one
        with ema.swapped_in() if ema is not None else contextlib.nullcontext():
            if samples.count > 0 and first is not None:
                captions = list(first["captions"][:samples.count])
                images = to_uint8(sample(model, objective, captions, first["sample_ids"][:len(captions)], samples))
                if samples.writer:
                    step = step_of()
                    save_pngs(images, captions, samples.folder / f"step-{step}")
                    metrics.log_images("validation/samples", images, step)
        return dist_mean(torch.tensor(total / max(count, 1)), loss_mesh)

    return validate
