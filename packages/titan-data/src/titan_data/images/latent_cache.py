"""`latent_cache`: a folder of pre-encoded samples (safetensors shards + index.json).

Written by `encode_to_cache` in the dataset's base order; read as a map-style source, so the
loader permutes, shards and resumes it exactly like the images it was made from. Each shard holds
every tensor with the samples on dim 0 and its captions (JSON) in the file's metadata.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from titan_data.errors import DataError
from titan_data.images.safetensors_io import SafetensorsRows
from titan_data.images.source import MapSource

INDEX = "index.json"
FORMAT = "titan-latent-cache"
VERSION = 1
RESERVED = ("captions", "sample_ids")


def find_index(dataset_path: str | None, split: str) -> pathlib.Path:
    """The index of `split`: `{path}/{split}/index.json`, or `{path}/index.json` written for that split."""
    if not dataset_path:
        raise DataError("dataset 'latent_cache' needs dataset_path: a folder written by encode_to_cache")
    root = pathlib.Path(dataset_path).expanduser()
    if not root.is_dir():
        raise DataError(f"latent cache folder {dataset_path!r} does not exist")
    if (root / split / INDEX).is_file():
        return root / split / INDEX
    if not (root / INDEX).is_file():
        raise DataError(f"latent cache folder {root} has no {INDEX} (nor {split}/{INDEX}): not a latent cache, "
                        "or encode_to_cache did not finish writing it")
    return root / INDEX


class LatentCacheSource(MapSource):
    """The samples of one latent cache folder, fetched by index."""

    name = "latent_cache"

    def __init__(self, dataset_path: str | None, split: str, resolution: int):
        path = find_index(dataset_path, split)
        self.root = path.parent
        try:
            index = json.loads(path.read_text())
        except ValueError as e:
            raise DataError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
            raise DataError(f"{path} is not a {FORMAT} version {VERSION} index")
        self.index = index
        self.description = f"latent cache {self.root} ({index['dataset']}, {index['count']} samples)"
        if index["split"] != split:
            raise DataError(f"{self.description} holds split {index['split']!r}; got split={split!r}: put each "
                            f"split's cache in its own folder ({self.root.parent}/{split}/)")
        if index["resolution"] != resolution:
            raise DataError(f"{self.description} was encoded at resolution={index['resolution']}; the loader "
                            f"asks for resolution={resolution}: pass the cache's resolution or re-encode")
        self.tensors: dict[str, dict] = index["tensors"]
        self.shards: list[SafetensorsRows] = []
        for entry in index["shards"]:
            file = self.root / entry["file"]
            if not file.is_file():
                raise DataError(f"{self.description}: shard {file} listed in {INDEX} is missing")
            shard = SafetensorsRows(file)
            for name, spec in self.tensors.items():
                if name not in shard.header or shard.shape(name) != [entry["count"], *spec["shape"]]:
                    raise DataError(f"{self.description}: shard {file} does not match {INDEX} for tensor {name!r}")
            self.shards.append(shard)
        self._ends = np.cumsum([e["count"] for e in index["shards"]])
        self._captions: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return int(self.index["count"])

    def fingerprint(self) -> str:
        keys = ("dataset", "split", "source_fingerprint", "resolution", "count", "tensors")
        return hashlib.sha256(json.dumps([self.index.get(k) for k in keys]).encode()).hexdigest()[:16]

    def _shard_captions(self, s: int) -> list[str]:
        if s not in self._captions:
            self._captions[s] = json.loads(self.shards[s].metadata["captions"])
        return self._captions[s]

    def fetch(self, indices: Sequence[int]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        shard = np.searchsorted(self._ends, idx, side="right")
        row = idx - np.concatenate([[0], self._ends])[shard]
        out: dict[str, Any] = {
            name: torch.empty((len(idx), *spec["shape"]), dtype=getattr(torch, spec["dtype"]))
            for name, spec in self.tensors.items()}
        captions: list[str] = [""] * len(idx)
        for s in np.unique(shard).tolist():
            where = np.nonzero(shard == s)[0]
            mask = torch.from_numpy(where)
            for name in self.tensors:
                out[name][mask] = self.shards[s].rows(name, row[where])
            names = self._shard_captions(s)
            for w in where.tolist():
                captions[w] = names[row[w]]
        out["captions"] = captions
        return out
