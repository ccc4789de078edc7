"""Mode 1, streaming: tokenize documents on the fly and pack them into fixed-size windows.

The token stream of one reader is BOS doc EOS BOS doc EOS ...; window j is stream[j*L : j*L+L+1]
(L = seq_len), so each token is a label exactly once. Reader = one (data-parallel rank, worker)
pair, reading every (dp * workers)-th document. Each reader's state is the source position of
the document under its next window plus the offset into that document: a resumed reader
re-tokenizes that one document and goes on exactly where it stopped.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from titan_data.errors import DataError
from titan_data.loader_base import TokenLoader
from titan_data.sources import DocSource
from titan_data.tokenizer import Tokenizer

log = logging.getLogger(__name__)
BAD_RECORD_POLICIES = ("skip", "raise")


@dataclass(frozen=True)
class PackConfig:
    tokenizer: Tokenizer
    seq_len: int
    batch_size: int
    text_field: str = "text"
    on_bad_record: str = "skip"
    infinite: bool = True


def _text_of(record: Any, cfg: PackConfig, source: DocSource, where: dict) -> str | None:
    text = record if isinstance(record, str) else (record.get(cfg.text_field) if isinstance(record, dict) else None)
    if isinstance(text, str):
        return text
    msg = (f"{source.description}: a record's {cfg.text_field!r} is {type(text).__name__} "
           f"({str(text)[:60]!r}), expected a string (at {where})")
    if cfg.on_bad_record == "raise":
        raise DataError(msg + "; set on_bad_record='skip' to skip and count such records")
    log.warning("skipping a malformed record: %s", msg)
    return None


def pack_batches(source: DocSource, shard: int, num_shards: int, state: dict | None,
                 cfg: PackConfig) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Batches `(inputs, labels, state_after)` of one reader, from `state` on."""
    state = state or {"doc": None, "offset": 0, "skipped": 0, "done": False}
    if state["done"]:
        return
    L, B = cfg.seq_len, cfg.batch_size
    need, drop_n = B * L + 1, B * L
    skipped, front_offset = state["skipped"], state["offset"]
    buf: list[int] = []
    spans: deque[list] = deque()  # [doc state, tokens of it still in buf], front first
    first = True
    good_epoch = state["doc"]["epoch"] if state["doc"] else 0  # epoch of the last usable document
    for doc_state, record in source.iter_docs(shard, num_shards, state["doc"], infinite=cfg.infinite):
        text = _text_of(record, cfg, source, doc_state)
        if text is None:
            skipped += 1
            if doc_state["epoch"] > good_epoch + 1:
                raise DataError(f"{source.description}: a whole pass over reader {shard} of {num_shards} "
                                f"found no usable document ({skipped} malformed records skipped)")
            continue
        good_epoch = doc_state["epoch"]
        ids = cfg.tokenizer.encode(text, bos=True, eos=True)
        if first:
            ids, first = ids[front_offset:], False
        spans.append([doc_state, len(ids)])
        buf.extend(ids)
        while len(buf) >= need:
            arr = np.asarray(buf[:need], dtype=np.int64)  # windows j*L .. j*L+L, j < B
            del buf[:drop_n]
            drop = drop_n
            while drop:
                if spans[0][1] <= drop:
                    drop -= spans.popleft()[1]
                    front_offset = 0
                else:
                    spans[0][1] -= drop
                    front_offset += drop
                    drop = 0
            after = {"doc": spans[0][0], "offset": front_offset, "skipped": skipped, "done": False}
            yield arr[:-1].reshape(B, L), arr[1:].reshape(B, L).copy(), after
    if first and state["doc"] is None:
        raise DataError(f"{source.description} gave no usable documents to reader {shard} of "
                        f"{num_shards} ({skipped} malformed records skipped)")
    # A finite stream ends here; tokens short of a full batch are dropped.
    yield None, None, {"doc": None, "offset": 0, "skipped": skipped, "done": True}


class _ReaderDataset(torch.utils.data.IterableDataset):
    """Worker w runs logical reader (w + rotation) % W; after its data ends it repeats an end marker,
    so the DataLoader's strict round-robin never changes and the main process knows who ended."""

    def __init__(self, source, cfg, dp_rank, dp_world_size, num_workers, states, rotation):
        self.args = (source, cfg, dp_rank, dp_world_size, num_workers, states, rotation)

    def __iter__(self):
        source, cfg, dp_rank, dp, W, states, rotation = self.args
        info = torch.utils.data.get_worker_info()
        w = ((info.id if info else 0) + rotation) % W
        end = None
        for x, y, st in pack_batches(source, dp_rank + w * dp, dp * W, states[w], cfg):
            if x is None:
                end = st
                break
            yield torch.from_numpy(x), torch.from_numpy(y), w, st
        end = end or {"doc": None, "offset": 0, "skipped": states[w]["skipped"] if states[w] else 0, "done": True}
        while True:
            yield None, None, w, end


class StreamingLoader(TokenLoader):
    """Tokenize-and-pack loader over a document source, sharded by data-parallel rank and worker."""

    mode = "streaming"

    def __init__(self, source: DocSource, cfg: PackConfig, *, dp_rank: int, dp_world_size: int,
                 num_workers: int):
        super().__init__(seq_len=cfg.seq_len, local_batch_size=cfg.batch_size, dp_rank=dp_rank,
                         dp_world_size=dp_world_size, num_workers=num_workers, infinite=cfg.infinite)
        self.source, self.cfg = source, cfg
        self._readers = max(1, num_workers)
        self._reset()

    def _reset(self) -> None:
        self._states: list[dict | None] = [None] * self._readers
        self._next = 0

    @property
    def skipped_records(self) -> int:
        """Malformed records skipped so far (summed over this rank's readers)."""
        return sum(s["skipped"] for s in self._states if s)

    def _batches(self):
        if self.num_workers == 0:
            for x, y, st in pack_batches(self.source, self.dp_rank, self.dp_world_size, self._states[0], self.cfg):
                self._states[0] = st
                if x is None:
                    return
                yield torch.from_numpy(x), torch.from_numpy(y)
            return
        ds = _ReaderDataset(self.source, self.cfg, self.dp_rank, self.dp_world_size, self.num_workers,
                            list(self._states), self._next)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.num_workers)
        ended = {w for w, s in enumerate(self._states) if s and s["done"]}
        for x, y, w, st in loader:
            self._states[w], self._next = st, (w + 1) % self._readers
            if x is None:
                ended.add(w)
                if len(ended) == self._readers:
                    return
                continue
            yield x, y

    def state_dict(self) -> dict:
        return {"mode": self.mode, "dp_rank": self.dp_rank, "dp_world_size": self.dp_world_size,
                "readers": self._readers, "seq_len": self.seq_len, "local_batch_size": self.local_batch_size,
                "source": self.source.fingerprint(), "next_reader": self._next,
                "readers_state": [dict(s) if s else None for s in self._states]}

    def _load(self, state: dict) -> None:
        why = "streaming mode resumes only on the same layout (use pre-tokenized mode to change it)"
        for key, mine in (("dp_world_size", self.dp_world_size), ("dp_rank", self.dp_rank),
                          ("readers", self._readers), ("seq_len", self.seq_len),
                          ("local_batch_size", self.local_batch_size)):
            self._check_same(state, key, mine, why)
        self._check_same(state, "source", self.source.fingerprint(), "the data changed since the state was saved")
        self._states = [dict(s) if s else None for s in state["readers_state"]]
        self._next = state["next_reader"]
        self._finished = False
