"""Token shards on disk: a folder of flat token files plus `index.json`, read through memmaps.

The folder holds one token stream, BOS doc EOS BOS doc EOS ..., split into files of at most
`shard_tokens` tokens. The index records the tokenizer that made it, each file's token count and a
checksum of its first bytes, so a folder that no longer matches its index is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Iterable, Sequence

import numpy as np

from titan_data.errors import DataError
from titan_data.tokenizer import Tokenizer

INDEX = "index.json"
FORMAT = "titan-tokens"
VERSION = 1
_HEAD_BYTES = 1 << 16


def _head_sha(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()[:16]


class TokenStore:
    """One token stream over several arrays (memmapped files or in-memory arrays).

    Memmaps open lazily in each process, so a store can be sent to DataLoader workers.
    """

    def __init__(self, parts: Sequence[np.ndarray | pathlib.Path], *, dtype: str, fingerprint: str,
                 sizes: Sequence[int], source: str):
        self._parts = list(parts)
        self._open: list[np.ndarray | None] = [p if isinstance(p, np.ndarray) else None for p in parts]
        self.dtype = np.dtype(dtype)
        self.fingerprint = fingerprint
        self.source = source
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
        self.total_tokens = int(self.offsets[-1])

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], *, fingerprint: str, source: str) -> TokenStore:
        dtype = arrays[0].dtype if arrays else np.dtype(np.uint32)
        return cls(list(arrays), dtype=str(dtype), fingerprint=fingerprint,
                   sizes=[a.size for a in arrays], source=source)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = [p if isinstance(p, np.ndarray) else None for p in self._parts]
        return state

    def _part(self, i: int) -> np.ndarray:
        arr = self._open[i]
        if arr is None:
            arr = self._open[i] = np.memmap(self._parts[i], dtype=self.dtype, mode="r")
        return arr

    def num_windows(self, seq_len: int) -> int:
        """Windows of seq_len + 1 tokens starting every seq_len tokens (each token a label once)."""
        return max(0, (self.total_tokens - 1) // seq_len)

    def windows(self, index: np.ndarray, seq_len: int) -> np.ndarray:
        """Windows `index` as an int64 array [len(index), seq_len + 1]; they may span files."""
        out = np.empty((len(index), seq_len + 1), dtype=np.int64)
        starts = np.asarray(index, dtype=np.int64) * seq_len
        parts = np.searchsorted(self.offsets, starts, side="right") - 1
        for row, (start, part) in enumerate(zip(starts.tolist(), parts.tolist())):
            pos, filled = start, 0
            while filled < seq_len + 1:
                lo = pos - int(self.offsets[part])
                take = min(seq_len + 1 - filled, int(self.offsets[part + 1]) - pos)
                out[row, filled:filled + take] = self._part(part)[lo:lo + take]
                filled, pos, part = filled + take, pos + take, part + 1
        return out


def open_token_dir(path: str | pathlib.Path) -> TokenStore:
    """Open a folder written by `write_token_dir`, checking every file against the index."""
    path = pathlib.Path(path).expanduser()
    index_path = path / INDEX
    if not path.is_dir():
        raise DataError(f"token folder {path} does not exist (expected a folder made by tools/pretokenize.py)")
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise DataError(f"token folder {path} has no {INDEX}: it was not made by tools/pretokenize.py, "
                        "or writing it did not finish") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {index_path} (expected a JSON token index): {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DataError(f"{index_path} is not a {FORMAT} v{VERSION} index")
    dtype = np.dtype(index["dtype"])
    files, sizes = [], []
    for entry in index["shards"]:
        f = path / entry["file"]
        if not f.is_file():
            raise DataError(f"token shard {f} listed in {index_path} is missing")
        expected = entry["tokens"] * dtype.itemsize
        if f.stat().st_size != expected:
            raise DataError(
                f"token shard {f} has {f.stat().st_size} bytes but {index_path} says {entry['tokens']} "
                f"{dtype.name} tokens ({expected} bytes): the shard does not match its index; re-run the pretokenizer"
            )
        if _head_sha(f) != entry["head_sha256"]:
            raise DataError(f"token shard {f} does not match the checksum in {index_path}: it was changed "
                            "after the index was written; re-run the pretokenizer")
        files.append(f)
        sizes.append(entry["tokens"])
    return TokenStore(files, dtype=dtype.name, fingerprint=index["tokenizer"]["fingerprint"],
                      sizes=sizes, source=str(path))


def write_token_dir(out_dir: str | pathlib.Path, docs: Iterable[str], tokenizer: Tokenizer, *,
                    shard_tokens: int = 1 << 28, batch_docs: int = 256, source: str = "") -> TokenStore:
    """Tokenize `docs` as BOS doc EOS into a token folder; the folder appears whole or not at all."""
    out_dir = pathlib.Path(out_dir).expanduser()
    if (out_dir / INDEX).is_file():
        raise DataError(f"token folder {out_dir} already exists: remove it or choose another output folder")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    shards: list[dict] = []
    state = {"f": None, "n": 0, "docs": 0}

    def add(ids: list[int]) -> None:
        arr = np.asarray(ids, dtype=dtype)
        while arr.size:
            if state["f"] is None or state["n"] >= shard_tokens:
                _close(tmp, shards, state)
                shards.append({"file": f"shard_{len(shards):05d}.bin", "tokens": 0, "documents": 0})
                state["f"], state["n"] = open(tmp / shards[-1]["file"], "wb"), 0
            take = arr[: shard_tokens - state["n"]]
            take.tofile(state["f"])
            state["n"] += take.size
            shards[-1]["tokens"] += int(take.size)
            arr = arr[take.size:]
        shards[-1]["documents"] += 1

    total_docs, batch = 0, []
    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_docs:
            for ids in tokenizer.encode_batch(batch, bos=True, eos=True):
                add(ids)
            total_docs, batch = total_docs + len(batch), []
    for ids in tokenizer.encode_batch(batch, bos=True, eos=True) if batch else []:
        add(ids)
    total_docs += len(batch)
    _close(tmp, shards, state)
    if total_docs == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"nothing to tokenize: the source {source or '(documents)'} has no documents")
    index = {"format": FORMAT, "version": VERSION, "dtype": np.dtype(dtype).name, "source": source,
             "tokenizer": {"fingerprint": tokenizer.fingerprint, "path": tokenizer.path,
                           "vocab_size": tokenizer.vocab_size},
             "documents": total_docs, "tokens": sum(s["tokens"] for s in shards), "shards": shards}
    (tmp / INDEX).write_text(json.dumps(index, indent=1))
    try:
        tmp.rename(out_dir)  # atomic; another process may have won the race: then use its copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out_dir / INDEX).is_file():
            raise
    return open_token_dir(out_dir)


def _close(tmp: pathlib.Path, shards: list[dict], state: dict) -> None:
    if state["f"] is not None:
        state["f"].close()
        shards[-1]["head_sha256"] = _head_sha(tmp / shards[-1]["file"])
        state["f"] = None
