"""`encode_to_cache`: one pass over a dataset in base order through frozen encoders, to disk.

The trainer passes its autoencoder and text encoders as one function, e.g.

    def encode(images, captions):                      # images [b, 3, R, R] float32 CPU, [-1, 1]
        x = images.to("cuda", torch.bfloat16)
        return {"latents": vae.encode(x), "t5": t5(captions), "clip": clip(captions)}

and later trains from `build_image_loader("latent_cache", dataset_path=out_dir, ...)`, which
yields those tensors (and the captions) with the same order, sharding and resume rules.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping

import torch

from titan_data.errors import DataError, check_positive
from titan_data.images import hf
from titan_data.images.build import check_layout, open_image_source
from titan_data.images.latent_cache import FORMAT, INDEX, RESERVED, VERSION
from titan_data.images.safetensors_io import write_safetensors
from titan_data.images.transforms import check_resolution, image_tensor

Encoder = Callable[[torch.Tensor, list[str]], Mapping[str, torch.Tensor]]


class _Range(torch.utils.data.Dataset):
    def __init__(self, source, n: int, batch: int):
        self.source, self.n, self.batch = source, n, batch

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __getitem__(self, k: int):
        return self.source.fetch(range(k * self.batch, min(self.n, (k + 1) * self.batch)))


def _image_batches(source, resolution: int, batch: int, num_workers: int,
                   max_samples: int | None) -> Iterator[tuple]:
    """(images, captions) of every sample once, in base order (stream order for Hub streams)."""
    if isinstance(source, hf.HubStream):
        images, captions = [], []
        for i, record in enumerate(source.open()):
            if max_samples is not None and i >= max_samples:
                break
            where = f"Hugging Face dataset {source.name}, row {i}"
            image, caption = source.row(record, where)
            images.append(image_tensor(image, resolution, where))
            captions.append(caption)
            if len(captions) == batch:
                yield torch.stack(images), captions
                images, captions = [], []
        if captions:
            yield torch.stack(images), captions
        return
    n = len(source) if max_samples is None else min(len(source), max_samples)
    ds = _Range(source, n, batch)
    batches = (ds[k] for k in range(len(ds))) if num_workers == 0 else \
        torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers)
    for b in batches:
        yield b["images"], b["captions"]


def _checked(out: object, b: int, spec: dict | None) -> dict[str, torch.Tensor]:
    """The encoder's output as CPU tensors, checked against the first batch's names/shapes/dtypes."""
    if not isinstance(out, Mapping) or not out or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise DataError(f"encode must return a non-empty dict of name -> Tensor, got {type(out).__name__}")
    for name, t in out.items():
        if not isinstance(name, str) or name in RESERVED or name.startswith("__"):
            raise DataError(f"encode returned tensor name {name!r}; names must be strings other than "
                            f"{', '.join(RESERVED)}")
        if t.dim() == 0 or t.shape[0] != b:
            raise DataError(f"encode returned {name!r} of shape {tuple(t.shape)}; dim 0 must be the batch ({b})")
        if spec is not None and (name not in spec or list(t.shape[1:]) != spec[name]["shape"]
                                 or str(t.dtype).removeprefix("torch.") != spec[name]["dtype"]):
            raise DataError(f"encode returned {name!r} {tuple(t.shape)} {t.dtype}, unlike the first batch "
                            f"({spec.get(name)}): every batch must give the same tensors")
    if spec is not None and set(out) != set(spec):
        raise DataError(f"encode returned tensors {sorted(out)}, the first batch {sorted(spec)}")
    return {name: t.detach().cpu() for name, t in out.items()}


def encode_to_cache(
    dataset: str,
    encode: Encoder,
    out_dir: str | os.PathLike,
    *,
    resolution: int,
    batch_size: int,
    dataset_path: str | None = None,
    split: str = "train",
    caption_field: str | None = None,
    image_field: str | None = None,
    shard_samples: int = 1024,
    num_workers: int = 0,
    max_samples: int | None = None,
) -> dict:
    """Encode every sample of one split once (base order, not shuffled) and write a latent cache:
    `shard-00000.safetensors`, ... of `shard_samples` samples, then `index.json` (dataset, split,
    resolution, count, tensor names / per-sample shapes / dtypes, shards). `encode(images,
    captions)` runs under torch.no_grad. `max_samples` caps a stream. Returns the index.
    """
    resolution = check_resolution(resolution)
    check_positive("batch_size", batch_size)
    check_positive("shard_samples", shard_samples)
    check_layout(1, 0, 1, 0, num_workers, split)
    if max_samples is not None:
        check_positive("max_samples", max_samples)
    if not callable(encode):
        raise DataError(f"encode must be a function (images, captions) -> dict of tensors, got {type(encode).__name__}")
    if dataset == "latent_cache":
        raise DataError("dataset 'latent_cache' is already encoded: encode the images it was made from")
    out = pathlib.Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise DataError(f"out_dir {out} is not empty: a latent cache is written into a new or empty folder")
    source = open_image_source(dataset, resolution=resolution, dataset_path=dataset_path, split=split,
                               caption_field=caption_field, image_field=image_field)
    if isinstance(source, hf.HubStream) and num_workers:
        raise DataError(f"num_workers={num_workers}: a streamed Hub dataset is decoded in the main process; use 0")
    out.mkdir(parents=True, exist_ok=True)
    spec: dict | None = None
    pending: dict[str, list[torch.Tensor]] = {}
    captions: list[str] = []
    shards: list[dict] = []

    def flush(n: int) -> None:
        file = f"shard-{len(shards):05d}.safetensors"
        tensors = {}
        for name, parts in pending.items():
            whole = torch.cat(parts)
            tensors[name], pending[name] = whole[:n], ([whole[n:]] if len(whole) > n else [])
        write_safetensors(out / file, tensors, {"captions": json.dumps(captions[:n])})
        del captions[:n]
        shards.append({"file": file, "count": n})

    with torch.no_grad():
        for images, caps in _image_batches(source, resolution, batch_size, num_workers, max_samples):
            result = _checked(encode(images, list(caps)), len(caps), spec)
            if spec is None:
                spec = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in result.items()}
            for name, t in result.items():
                pending.setdefault(name, []).append(t)
            captions.extend(caps)
            while len(captions) >= shard_samples:
                flush(shard_samples)
    if captions:
        flush(len(captions))
    if not shards:
        raise DataError(f"dataset {dataset!r} split {split!r} gave no samples to encode")
    index = {"format": FORMAT, "version": VERSION, "dataset": dataset, "dataset_path": dataset_path, "split": split,
             "source_fingerprint": source.fingerprint(), "resolution": resolution,
             "count": sum(s["count"] for s in shards), "tensors": spec, "shards": shards}
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX)  # written last: a folder without an index is an unfinished cache
    return index
