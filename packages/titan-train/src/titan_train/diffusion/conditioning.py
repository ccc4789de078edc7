"""The frozen parts of a Flux run: the autoencoder (images <-> latents) and the text encoders
(T5 hidden states, CLIP pooled vector). Built identically on every rank, never trained, never
sharded: each rank encodes its own micro-batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from titan_train.errors import ConfigError


@dataclass(frozen=True)
class EncoderSettings:
    t5: str = "tiny"
    clip: str = "tiny"
    autoencoder_path: str | None = None
    autoencoder_flavor: str = "debug"
    max_t5_len: int = 256


class Conditioner:
    """encode(batch) -> (latents [B, z, h, w], t5 [B, L, d_t5], clip [B, d_clip]); the batch
    holds images (encoded now) or a cache's latents / t5 / clip (used as they are)."""

    def __init__(self, autoencoder: nn.Module, text: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.autoencoder, self.text, self.device, self.dtype = autoencoder, text, device, dtype
        # the unconditional caption, for guidance dropout (None without text encoders: a latent cache)
        self.empty = self._encode_text([""]) if text is not None else None

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        t5, clip = self.text.encode(list(captions))
        return t5.to(self.device, self.dtype), clip.to(self.device, self.dtype)

    @torch.no_grad()
    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "latents" in batch:  # a latent cache (titan_data.encode_to_cache)
            return (batch["latents"].to(self.device, self.dtype), batch["t5"].to(self.device, self.dtype),
                    batch["clip"].to(self.device, self.dtype))
        latents = self.autoencoder.encode(batch["images"].to(self.device, self.dtype))
        return (latents, *self._encode_text(batch["captions"]))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents.to(self.dtype))

    def encode_fn(self):
        """For titan_data.encode_to_cache: images, captions -> the tensors a cache stores."""
        def encode(images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
            latents, t5, clip = self.encode({"images": images, "captions": captions})
            return {"latents": latents.cpu(), "t5": t5.cpu(), "clip": clip.cpu()}
        return encode


def build_conditioner(s: EncoderSettings, args, *, device: torch.device, dtype: torch.dtype,
                      seed: int = 0) -> Conditioner:
    """The autoencoder and text encoders of `s`, checked against the model's input widths (the
    error names the config key). Random weights are drawn from `seed` on every rank alike."""
    from titan_models.flux import (
        AE_FLAVORS,
        AutoEncoder,
        PixelAutoEncoder,
        build_text_encoders,
        load_autoencoder,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if s.autoencoder_path:
            path = Path(s.autoencoder_path).expanduser()
            if not path.is_file():
                raise ConfigError(f"encoder.autoencoder_path = {s.autoencoder_path!r} is not a file (BFL's "
                                  "ae.safetensors); unset it for random autoencoder weights")
            ae = load_autoencoder(str(path))
        elif s.autoencoder_flavor == "pixels":  # no weights: pooled pixels as latents (debug runs)
            ae = PixelAutoEncoder()
        else:
            ae = AutoEncoder(AE_FLAVORS[s.autoencoder_flavor])
            ae.init_weights()
        for key, name in (("encoder.t5_encoder", s.t5), ("encoder.clip_encoder", s.clip)):
            if name not in ("tiny", "none") and not Path(name).expanduser().is_dir():
                raise ConfigError(f"{key} = {name!r} is neither 'tiny', 'none' nor a local folder (a Hugging Face "
                                  "model folder: config.json, weights and tokenizer files; nothing is downloaded)")
        text = None if "none" in (s.t5, s.clip) else build_text_encoders(s.t5, s.clip, max_t5_len=s.max_t5_len)
    ae = ae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if text is not None:
        text = text.to(device=device, dtype=dtype).eval().requires_grad_(False)
    cond = Conditioner(ae, text, device, dtype)
    t5, clip = cond.empty if cond.empty is not None else (torch.zeros(args.context_in_dim),
                                                          torch.zeros(args.vec_in_dim))
    z = ae.args.z_channels if hasattr(ae, "args") else None
    for key, got, want, field in (("encoder.t5_encoder", t5.shape[-1], args.context_in_dim, "context_in_dim"),
                                  ("encoder.clip_encoder", clip.shape[-1], args.vec_in_dim, "vec_in_dim"),
                                  ("encoder.autoencoder", None if z is None else 4 * z, args.in_channels,
                                   "in_channels")):
        if got is not None and got != want:
            raise ConfigError(f"{key} gives {got}-wide features, but the model's {field} is {want}: pick a flavor "
                              f"and encoders that match (flux-debug pairs with 'tiny'; flux-dev with T5-XXL + "
                              "CLIP-L + BFL's autoencoder)")
    return cond
