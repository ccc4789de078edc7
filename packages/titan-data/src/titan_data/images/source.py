"""Map-style sources: sample i of a fixed-size dataset, fetched by index in any process."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch

from titan_data.images.transforms import image_tensor


class MapSource(abc.ABC):
    """A dataset of `len(source)` samples in a fixed base order; `fetch` gives a batch of them.

    Sources are pickled into DataLoader workers, so they open files lazily in each process.
    """

    name: str         # the `dataset` argument it was built from (checked on resume)
    description: str  # for error messages

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Changes when the data changes (checked on resume)."""

    @abc.abstractmethod
    def fetch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Batch of base samples `indices`: tensors stacked on dim 0, plus "captions": list[str]."""


class ImageSource(MapSource):
    """Samples that are (image, caption); `fetch` applies the training transform at `resolution`."""

    resolution: int

    @abc.abstractmethod
    def item(self, i: int) -> tuple[Any, str, str]:
        """(image as bytes / PIL image / HF dict, caption, where: shard and key for errors)."""

    def items(self, indices: Sequence[int]) -> list[tuple[Any, str, str]]:
        """`item` of each index (sources that read faster in bulk override this)."""
        return [self.item(int(i)) for i in indices]

    def fetch(self, indices: Sequence[int]) -> dict[str, Any]:
        rows = self.items(indices)
        images = [image_tensor(image, self.resolution, where) for image, _, where in rows]
        return {"images": torch.stack(images), "captions": [caption for _, caption, _ in rows]}
