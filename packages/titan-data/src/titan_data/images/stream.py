"""A streamed Hugging Face dataset as image-caption batches, sharded by rank, resumable.

Each rank reads its part of the stream (`datasets.distributed.split_dataset_by_node`), in stream
order (no shuffle buffer: its contents are not in the stream's state, so it could not resume
exactly). The state is the IterableDataset's own `state_dict()` at the last sample handed out,
which belongs to one rank of one dp degree: a streamed run resumes on the same dp_world_size and
local_batch_size only. `sample_ids` count positions in the rank-interleaved stream
(k*G + r*B + j), so they stay unique, but which sample has which id depends on the layout.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from titan_data.errors import DataError
from titan_data.images.hf import HubStream
from titan_data.images.loader import Batch, ImageCaptionLoader
from titan_data.images.transforms import image_tensor


class StreamImageLoader(ImageCaptionLoader):
    """Batches from a Hub stream. A finite pass yields N // (dp*B) batches on every rank (N from
    the dataset's metadata); a rank whose part runs out first starts its part again to fill them."""

    mode = "image_stream"

    def __init__(self, stream: HubStream, *, resolution: int, local_batch_size: int, dp_rank: int,
                 dp_world_size: int, infinite: bool):
        super().__init__(dataset=stream.name, resolution=resolution, local_batch_size=local_batch_size,
                         dp_rank=dp_rank, dp_world_size=dp_world_size, num_workers=0, infinite=infinite)
        self.stream = stream
        self.num_samples = stream.num_examples
        if not infinite and dp_world_size > 1 and self.num_samples is None:
            raise DataError(f"Hugging Face dataset {stream.name!r} does not state the size of split "
                            f"{stream.split!r}, so {dp_world_size} ranks cannot agree on the length of one pass: "
                            "use infinite=True with a fixed number of steps, or a local copy of the split")
        self._stop = None if infinite or self.num_samples is None else self.num_samples // self.global_batch_size
        if self._stop == 0:
            raise DataError(f"Hugging Face dataset {stream.name!r} split {stream.split!r} has {self.num_samples} "
                            f"rows, fewer than one global batch ({self.global_batch_size}): a pass yields nothing")
        self._ds = None
        self._reset()

    def _reset(self) -> None:
        self._batch, self._epoch, self._hf_state = 0, 0, None  # None: the start of an epoch

    def _open(self):
        if self._ds is None:
            from datasets.distributed import split_dataset_by_node
            self._ds = split_dataset_by_node(self.stream.open(), rank=self.dp_rank, world_size=self.dp_world_size)
            self._start = copy.deepcopy(self._ds.state_dict())
        return self._ds

    def _rows(self, epoch: int, state: dict | None) -> Iterator[tuple[dict, dict]]:
        """(record, state after it) from `state` on; epochs go on forever (ended by the caller)."""
        ds = self._open()
        while True:
            ds.set_epoch(epoch)
            ds.load_state_dict(copy.deepcopy(state or self._start))
            n = 0
            for record in ds:
                n += 1
                yield record, {"epoch": epoch, "hf": copy.deepcopy(ds.state_dict())}
            if n == 0 and state is None:
                raise DataError(f"rank {self.dp_rank} of {self.dp_world_size} got no rows of Hugging Face dataset "
                                f"{self.stream.name!r} split {self.stream.split!r}")
            epoch, state = epoch + 1, None

    def _batches(self) -> Iterator[Batch]:
        rows = self._rows(self._epoch, self._hf_state)
        name = f"Hugging Face dataset {self.stream.name} ({self.stream.split})"
        while self._stop is None or self._batch < self._stop:
            ids = self._ids(self._batch)
            images, captions, after = [], [], None
            for record, after in rows:
                if after["epoch"] > 0 and not self.infinite and self._stop is None:
                    return  # one rank, size unknown: the pass ends with the stream, dropping a partial batch
                where = f"{name}, sample_id {int(ids[len(captions)])}"
                image, caption = self.stream.row(record, where)
                images.append(image_tensor(image, self.resolution, where))
                captions.append(caption)
                if len(captions) == self.local_batch_size:
                    break
            batch = {"images": torch.stack(images), "captions": captions, "sample_ids": ids}
            self._batch, self._epoch, self._hf_state = self._batch + 1, after["epoch"], after["hf"]
            yield batch

    def state_dict(self) -> dict:
        return {"mode": self.mode, "dataset": self.dataset, "resolution": self.resolution,
                "split": self.stream.split, "fingerprint": self.stream.fingerprint(),
                "dp_rank": self.dp_rank, "dp_world_size": self.dp_world_size,
                "local_batch_size": self.local_batch_size, "batches": self._batch, "epoch": self._epoch,
                "hf_state": copy.deepcopy(self._hf_state)}

    def _load(self, state: dict) -> None:
        why = "a streamed dataset resumes only on the same layout (use a local copy to change it)"
        for key, mine in (("dp_world_size", self.dp_world_size), ("dp_rank", self.dp_rank),
                          ("local_batch_size", self.local_batch_size)):
            self._check_same(state, key, mine, why)
        self._check_same(state, "split", self.stream.split)
        self._check_same(state, "fingerprint", self.stream.fingerprint())
        self._batch, self._epoch = int(state["batches"]), int(state["epoch"])
        self._hf_state = copy.deepcopy(state["hf_state"])
