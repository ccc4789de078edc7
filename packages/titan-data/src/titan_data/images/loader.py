"""`ImageCaptionLoader`: checkpointable image-caption batches with global sample ids.

Rank r's k-th batch holds global positions g = k*G + r*B + j (B = local batch, G = dp*B), counted
over the whole run and continuing across epochs, and reports them as `sample_ids`. Map-style
sources give position g the base sample perm_e(g mod N) of epoch e = g // N (a seeded
permutation per epoch), so one rank with batch 4 sees exactly the samples and ids that two ranks
with batch 2 see together, and the state is just the count of global samples consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from titan_data.errors import DataError
from titan_data.images.source import MapSource
from titan_data.loader_base import BatchCounter, ResumableLoader
from titan_data.permutation import epoch_key, permute

Batch = dict[str, Any]


def global_order(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Base sample index of each global position (epoch e = g // n permuted by its own key)."""
    epochs, pos = np.divmod(np.asarray(positions, dtype=np.int64), n)
    out = np.empty_like(pos)
    for e in np.unique(epochs).tolist():
        m = epochs == e
        out[m] = permute(pos[m], n, epoch_key(seed, e))
    return out


class ImageCaptionLoader(ResumableLoader):
    """Yields dicts {"images" [B, 3, R, R] float in [-1, 1] (or a latent cache's tensors),
    "captions" list[str], "sample_ids" LongTensor [B]}. Its own iterator, like TokenLoader: a
    finite loader that ran out starts a fresh pass when iterated again."""

    def __init__(self, *, dataset: str, resolution: int, local_batch_size: int, dp_rank: int,
                 dp_world_size: int, num_workers: int, infinite: bool):
        self.dataset, self.resolution = dataset, resolution
        self.local_batch_size, self.dp_rank, self.dp_world_size = local_batch_size, dp_rank, dp_world_size
        self.num_workers, self.infinite = num_workers, infinite
        self._init_iteration()

    @property
    def global_batch_size(self) -> int:
        return self.local_batch_size * self.dp_world_size

    def _ids(self, k: int) -> torch.Tensor:
        """Global sample ids of this rank's k-th batch (k counted over the whole run)."""
        first = k * self.global_batch_size + self.dp_rank * self.local_batch_size
        return torch.arange(first, first + self.local_batch_size, dtype=torch.int64)

    def _check_state(self, state: dict) -> None:
        self._check_same(state, "dataset", self.dataset)
        self._check_same(state, "resolution", self.resolution)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dataset={self.dataset!r}, resolution={self.resolution}, "
                f"local_batch_size={self.local_batch_size}, dp_rank={self.dp_rank}, "
                f"dp_world_size={self.dp_world_size}, num_workers={self.num_workers})")


class _BatchAt(torch.utils.data.Dataset):
    """This rank's k-th batch after `start` global samples: workers build batches by index."""

    def __init__(self, source: MapSource, start: int, batch: int, dp_rank: int, dp: int, seed: int):
        self.source, self.start, self.batch, self.dp_rank, self.dp, self.seed = source, start, batch, dp_rank, dp, seed

    def __getitem__(self, k: int) -> Batch:
        first = self.start + (k * self.dp + self.dp_rank) * self.batch
        g = np.arange(first, first + self.batch, dtype=np.int64)
        out = self.source.fetch(global_order(g, len(self.source), self.seed).tolist())
        out["sample_ids"] = torch.from_numpy(g)
        return out

    def __len__(self) -> int:  # batches left in a finite pass
        return max(0, (len(self.source) - self.start) // (self.dp * self.batch))


class MapImageLoader(ImageCaptionLoader):
    """Loader over a map-style source (synthetic, webdataset, local HF dataset, latent cache).

    A finite pass (`infinite=False`) is epoch 0 in its permuted order and drops the last
    incomplete global batch, so every rank yields N // (dp * B) batches.
    """

    mode = "image_map"

    def __init__(self, source: MapSource, *, resolution: int, local_batch_size: int, dp_rank: int,
                 dp_world_size: int, seed: int, num_workers: int, infinite: bool):
        super().__init__(dataset=source.name, resolution=resolution, local_batch_size=local_batch_size,
                         dp_rank=dp_rank, dp_world_size=dp_world_size, num_workers=num_workers, infinite=infinite)
        self.source, self.seed, self.num_samples = source, seed, len(source)
        if not infinite and self.num_samples < self.global_batch_size:
            raise DataError(f"{source.description} has {self.num_samples} samples, fewer than one global batch "
                            f"(dp_world_size {dp_world_size} x local_batch_size {local_batch_size}): "
                            "a single pass (infinite=False) would yield nothing")
        self.samples = 0  # global samples consumed, over all ranks

    @property
    def epoch(self) -> int:
        return self.samples // self.num_samples

    def _reset(self) -> None:
        self.samples = 0

    def _batches(self) -> Iterator[Batch]:
        ds = _BatchAt(self.source, self.samples, self.local_batch_size, self.dp_rank, self.dp_world_size, self.seed)
        stop = None if self.infinite else len(ds)
        if self.num_workers == 0:
            batches = (ds[k] for k in BatchCounter(stop))
        else:  # the DataLoader hands batches back in sampler order, so workers never reorder them
            batches = iter(torch.utils.data.DataLoader(ds, batch_size=None, sampler=BatchCounter(stop),
                                                       num_workers=self.num_workers))
        for batch in batches:
            self.samples += self.global_batch_size
            yield batch

    def state_dict(self) -> dict:
        return {"mode": self.mode, "dataset": self.dataset, "resolution": self.resolution,
                "fingerprint": self.source.fingerprint(), "num_samples": self.num_samples, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "samples": self.samples, "epoch": self.epoch}

    def _load(self, state: dict) -> None:
        # Any layout whose dp_world_size x local_batch_size divides the samples consumed continues
        # the same global stream (gradient accumulation keeps a trainer's global batch when the
        # dp degree changes); otherwise the ranks' next positions would not line up.
        if int(state.get("samples", 0)) % self.global_batch_size:
            raise DataError(f"data loader state has consumed {state.get('samples')} samples, not a multiple of this "
                            f"loader's dp_world_size x local_batch_size = {self.global_batch_size} (saved with "
                            f"{state.get('global_batch_size')}): resume with a layout whose batch divides it")
        self._check_same(state, "seed", self.seed, "pass the seed the run was started with")
        self._check_same(state, "num_samples", self.num_samples, "the data changed since the state was saved")
        self._check_same(state, "fingerprint", self.source.fingerprint(), "the data changed since the state was saved")
        self.samples = int(state["samples"])
