"""One micro-batch of rectified-flow training: encode, noise, predict the velocity, MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from titan_train.diffusion import flow
from titan_train.diffusion.conditioning import Conditioner


class FlowMatching:
    """forward_loss(model, batch, sample_ids) -> the mean squared velocity error (0-dim float32)
    over this micro-batch's latent elements; `purpose` picks the draws (training or validation)."""

    def __init__(self, conditioner: Conditioner, settings: flow.FlowSettings, *, seed: int, guidance: float | None,
                 latent_hw: tuple[int, int]) -> None:
        self.cond, self.settings, self.seed, self.guidance = conditioner, settings, seed, guidance
        self.latent_hw = latent_hw
        self.image_tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)

    def inputs(self, batch: dict, sample_ids: torch.Tensor, purpose: int) -> tuple[dict, torch.Tensor]:
        """The model's keyword inputs and the target velocity [B, L_img, C]."""
        from titan_models.flux import image_ids, pack_latents, text_ids

        x0, t5, clip = self.cond.encode(batch)
        d = flow.draw(sample_ids, self.seed, purpose, tuple(x0.shape[1:]), self.image_tokens, self.settings)
        dev = x0.device
        if dev.type == "cuda":  # pinned: the copy queues behind the GPU's work instead of blocking
            d.noise = d.noise.pin_memory()
        if self.settings.cfg_prob > 0:  # guidance dropout: the empty caption's encodings instead
            e5, eclip = self.cond.empty
            t5 = torch.where(d.drop_t5.to(dev).view(-1, 1, 1), e5.expand_as(t5), t5)
            clip = torch.where(d.drop_clip.to(dev).view(-1, 1), eclip.expand_as(clip), clip)
        x_t, target = flow.noisy(x0.float(), d.noise.to(dev, non_blocking=True), d.t.to(dev))
        b, _, h, w = x0.shape
        kwargs = {"img": pack_latents(x_t).to(x0.dtype), "img_ids": image_ids(b, h, w, dev), "txt": t5,
                  "txt_ids": text_ids(b, t5.shape[1], dev), "timesteps": d.t.to(dev), "y": clip}
        if self.guidance is not None:
            kwargs["guidance"] = torch.full((b,), self.guidance, device=dev)
        return kwargs, pack_latents(target)

    def __call__(self, model: nn.Module, batch: dict, sample_ids: torch.Tensor,
                 purpose: int = flow.TRAIN) -> torch.Tensor:
        kwargs, target = self.inputs(batch, sample_ids, purpose)
        pred = model(**kwargs)
        pred = pred.full_tensor() if hasattr(pred, "full_tensor") else pred
        return F.mse_loss(pred.float(), target.float())
