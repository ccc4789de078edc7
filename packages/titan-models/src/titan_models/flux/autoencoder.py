"""The FLUX.1 image autoencoder (BFL's KL autoencoder architecture), frozen during training.

Encoder: conv_in -> per level, num_res_blocks ResNet blocks then a stride-2 downsample (not after
the last level) -> mid (ResNet, single-head attention, ResNet) -> GroupNorm, swish, conv_out to
2 x z_channels (posterior mean and log-variance). Decoder mirrors it (num_res_blocks + 1 blocks
per level, nearest-neighbour upsampling). Module names follow BFL's `ae.safetensors`
(encoder.down.0.block.0.norm1.weight, encoder.mid.attn_1.q.weight, decoder.up.3.upsample.conv...),
so that file loads as it is (load_autoencoder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from titan_models import init as winit
from titan_models.errors import ModelConfigError


@dataclass(frozen=True)
class AutoEncoderArgs:
    resolution: int = 256            # nominal training resolution (informative; any multiple of 8 works)
    in_channels: int = 3
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611     # latents are (mean - shift) * scale: roughly unit variance
    shift_factor: float = 0.1159
    num_groups: int = 32             # GroupNorm groups: must divide every level's channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


AE_FLAVORS: dict[str, AutoEncoderArgs] = {
    "flux": AutoEncoderArgs(),
    # ~0.1M parameters, still 8x downsampling (4 levels); 4 groups divide its 8 and 16 channels
    "debug": AutoEncoderArgs(ch=8, ch_mult=(1, 1, 2, 2), num_res_blocks=1, num_groups=4),
}


def _norm(a: AutoEncoderArgs, channels: int) -> nn.GroupNorm:
    if channels % a.num_groups:
        raise ModelConfigError(f"autoencoder num_groups={a.num_groups} does not divide {channels} channels "
                               f"(ch={a.ch}, ch_mult={a.ch_mult}): choose a divisor of every level's width")
    return nn.GroupNorm(a.num_groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, a: AutoEncoderArgs, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(a, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(a, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """One attention head over all positions, channels as features (1x1 convolutions)."""

    def __init__(self, a: AutoEncoderArgs, c: int) -> None:
        super().__init__()
        self.norm = _norm(a, c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (t(n).flatten(2).transpose(1, 2)[:, None] for t in (self.q, self.k, self.v))  # [B, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # BFL pads right and bottom only


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: `block` (ResNet blocks), then `downsample` / `upsample` if any."""

    def __init__(self, blocks: list[nn.Module], resample: tuple[str, nn.Module] | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample is not None:
            setattr(self, *resample)


def _mid(a: AutoEncoderArgs, c: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(a, c, c), AttnBlock(a, c), ResnetBlock(a, c, c)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, a: AutoEncoderArgs) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(a.in_channels, a.ch, 3, padding=1)
        widths = [a.ch * m for m in a.ch_mult]
        self.down, c = nn.ModuleList(), a.ch
        for i, width in enumerate(widths):
            blocks = []
            for _ in range(a.num_res_blocks):
                blocks.append(ResnetBlock(a, c, width))
                c = width
            last = i == len(widths) - 1
            self.down.append(_Level(blocks, None if last else ("downsample", Downsample(c))))
        self.mid = _mid(a, c)
        self.norm_out, self.conv_out = _norm(a, c), nn.Conv2d(c, 2 * a.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, a: AutoEncoderArgs) -> None:
        super().__init__()
        widths = [a.ch * m for m in a.ch_mult]
        c = widths[-1]
        self.conv_in = nn.Conv2d(a.z_channels, c, 3, padding=1)
        self.mid = _mid(a, c)
        levels = []
        for i in reversed(range(len(widths))):  # built from the lowest resolution up
            blocks = []
            for _ in range(a.num_res_blocks + 1):
                blocks.append(ResnetBlock(a, c, widths[i]))
                c = widths[i]
            levels.append(_Level(blocks, ("upsample", Upsample(c)) if i else None))
        self.up = nn.ModuleList(reversed(levels))  # up[0] is the full resolution, as BFL indexes it
        self.norm_out, self.conv_out = _norm(a, c), nn.Conv2d(c, a.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    """encode: images [B, 3, H, W] in [-1, 1] -> latents [B, z, H/8, W/8], scaled and shifted;
    decode: the inverse map, images in about [-1, 1]. Deterministic: the posterior mean."""

    def __init__(self, args: AutoEncoderArgs) -> None:
        super().__init__()
        self.args = args
        self.encoder, self.decoder = Encoder(args), Decoder(args)
        if self.encoder.conv_in.weight.device.type != "meta":
            self.init_weights()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        f = self.args.downsample
        if x.ndim != 4 or x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"images must be [B, C, H, W] with H and W multiples of {f}, got {tuple(x.shape)}")
        mean = self.encoder(x)[:, : self.args.z_channels]
        return (mean - self.args.shift_factor) * self.args.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z / self.args.scale_factor + self.args.shift_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random weights from torch.initial_seed() and each name (convolutions as torch's default
        bound 1/sqrt(fan_in), zero biases, unit norms): for tests and runs without ae.safetensors."""
        seed = torch.initial_seed()
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                rule = winit.zeros
            elif ".norm" in name:
                rule = winit.ones
            else:
                bound = (p[0].numel()) ** -0.5
                rule = (lambda b: lambda t, g: t.uniform_(-b, b, generator=g))(bound)
            winit.fill_by_name(p, name, seed, rule)


def load_autoencoder(path: str | os.PathLike, args: AutoEncoderArgs | None = None, *,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AutoEncoder:
    """An AutoEncoder holding the weights of a BFL-layout safetensors file (FLUX.1's ae.safetensors),
    frozen in eval mode. args: default AE_FLAVORS["flux"]. A file that does not fit: ModelConfigError
    naming the path and the missing / unexpected / mis-shaped keys."""
    from safetensors.torch import load_file

    args = args or AE_FLAVORS["flux"]
    if not os.path.isfile(path):
        raise ModelConfigError(f"autoencoder weights {os.fspath(path)!r}: no such file (FLUX.1's ae.safetensors)")
    try:
        sd = load_file(os.fspath(path), device=str(device or "cpu"))
    except Exception as e:  # a truncated or non-safetensors file
        raise ModelConfigError(f"autoencoder weights {os.fspath(path)!r} cannot be read as safetensors: {e}") from e
    with torch.device("meta"):
        model = AutoEncoder(args)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in sorted(set(want) & set(sd))
              if tuple(sd[k].shape) != want[k]]
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = [f"missing {len(missing)} keys: {few(missing)}" if missing else "",
                 f"unexpected {len(unexpected)} keys: {few(unexpected)}" if unexpected else "",
                 f"wrong shapes: {few(shapes)}" if shapes else ""]
        raise ModelConfigError(f"autoencoder weights {os.fspath(path)!r} do not fit AutoEncoder({args}): "
                               + "; ".join(p for p in parts if p))
    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model
