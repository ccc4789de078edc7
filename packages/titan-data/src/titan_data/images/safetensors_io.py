"""Latent-cache shards as safetensors files, through the safetensors library: written once via a
temporary file (a crash leaves no partial shard), read row by row with safe_open's lazy slices
(only the rows asked for are copied out of the file)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from titan_data.errors import DataError


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` (samples on dim 0) and string `metadata` to `path`."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


class SafetensorsRows:
    """Row access (dim 0) to the tensors of one safetensors file; opened lazily per process (the
    handle is not pickled into data-loader workers)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            with safe_open(self.path, framework="pt") as f:
                self.metadata: dict[str, str] = f.metadata() or {}
                self._shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        except (OSError, SafetensorError) as e:
            raise DataError(f"{path} is not a readable safetensors file ({e})") from None
        self.header = self._shapes  # names present in the file
        self._file = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def shape(self, name: str) -> list[int]:
        return list(self._shapes[name])

    def rows(self, name: str, index: np.ndarray) -> torch.Tensor:
        """Rows `index` of tensor `name`, copied out of the file."""
        if self._file is None:
            self._file = safe_open(self.path, framework="pt")
        sl = self._file.get_slice(name)
        rows = [sl[i:i + 1] for i in np.asarray(index, dtype=np.int64).tolist()]  # each a small mapped read
        return torch.cat(rows) if rows else sl[0:0]
