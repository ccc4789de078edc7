"""Image decoding and the one training transform: RGB, shorter side to R, center crop, [-1, 1]."""

from __future__ import annotations

import io
import pathlib
from typing import Any

import numpy as np
import PIL.Image
import torch

from titan_data.errors import DataError

# Flux: an 8x autoencoder, then 2x2 latent patches, so pixels must divide by 16.
RESOLUTION_MULTIPLE = 16


def check_resolution(resolution: object) -> int:
    """`resolution` as a positive multiple of 16, or a DataError naming it."""
    if (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
            or resolution % RESOLUTION_MULTIPLE):
        raise DataError(f"resolution must be a positive multiple of {RESOLUTION_MULTIPLE} (an 8x autoencoder, "
                        f"then 2x2 latent patches), got {resolution!r}")
    return resolution


def decode_image(value: Any, where: str, *, min_side: int | None = None) -> PIL.Image.Image:
    """A PIL image from encoded bytes, a PIL image, or a Hugging Face {"bytes", "path"} dict.

    `min_side`: JPEGs may be decoded at a reduced scale whose shorter side is still >= min_side
    (the DCT does the downscaling: several times faster for large photos).
    """
    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or (pathlib.Path(value["path"]).read_bytes() if value.get("path") else None)
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise DataError(f"{where}: the image is {type(value).__name__}, expected encoded image bytes or a PIL image")
    try:
        img = PIL.Image.open(io.BytesIO(value))
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = min_side / min(w, h)
            img.draft(None, (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
        img.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot decode the image ({type(e).__name__}: {e})") from None
    return img


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB; transparent pixels are put on white (dropping alpha would show arbitrary hidden colors)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = PIL.Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def resize_center_crop(img: PIL.Image.Image, resolution: int) -> PIL.Image.Image:
    """Shorter side to `resolution` (bicubic; PIL widens the filter when shrinking, i.e. antialiased),
    then the central resolution x resolution square."""
    w, h = img.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), PIL.Image.Resampling.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    return img


def to_tensor(img: PIL.Image.Image) -> torch.Tensor:
    """uint8 HWC RGB -> float32 [3, H, W] in [-1, 1]."""
    arr = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
    return arr.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def image_tensor(value: Any, resolution: int, where: str) -> torch.Tensor:
    """The whole training transform of one image: decode, RGB, resize + center crop, [-1, 1]."""
    img = to_rgb(decode_image(value, where, min_side=resolution))
    return to_tensor(resize_center_crop(img, resolution))
