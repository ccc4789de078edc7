"""Hugging Face image-caption datasets: a local folder (map-style) or a Hub id (streamed).

Columns are found by name unless given: the image from jpg / image / png / webp, the caption from
txt / caption / text / prompt. Image columns are read undecoded (bytes), so decoding and resizing
happen in one place (transforms.py) for every source.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from titan_data.errors import DataError
from titan_data.images.source import ImageSource

IMAGE_COLUMNS = ("jpg", "image", "png", "webp")
CAPTION_COLUMNS = ("txt", "caption", "text", "prompt")


def pick_columns(columns: Sequence[str], image_field: str | None, caption_field: str | None,
                 where: str) -> tuple[str, str]:
    """(image column, caption column), or a DataError listing the columns found."""
    found = ", ".join(columns) or "none"
    picked = []
    for field, choices, what, key in ((image_field, IMAGE_COLUMNS, "image", "image_field"),
                                      (caption_field, CAPTION_COLUMNS, "caption", "caption_field")):
        if field is not None:
            if field not in columns:
                raise DataError(f"{where} has no column {key}={field!r}; its columns are {found}")
            picked.append(field)
            continue
        col = next((c for c in choices if c in columns), None)
        if col is None:
            raise DataError(f"{where} has no {what} column (looked for {', '.join(choices)}); its columns are "
                            f"{found}: pass {key}=<column>")
        picked.append(col)
    return picked[0], picked[1]


def _undecoded(ds: Any, image_col: str) -> Any:
    import datasets
    feature = (ds.features or {}).get(image_col)
    return ds.cast_column(image_col, datasets.Image(decode=False)) if isinstance(feature, datasets.Image) else ds


def _caption(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: caption column {column!r} holds {type(value).__name__} "
                        f"({str(value)[:60]!r}), expected a string")
    return value


def is_hf_folder(path: pathlib.Path) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def open_hf_folder(path: pathlib.Path, split: str) -> Any:
    """The `split` of a local dataset folder: save_to_disk output, or data files `load_dataset` reads."""
    import datasets
    try:
        if is_hf_folder(path):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path))
    except Exception as e:  # datasets raises many types; all mean "not a dataset folder"
        raise DataError(f"{path} is not a Hugging Face dataset folder ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"dataset folder {path} has splits {', '.join(ds)}; got split={split!r}")
        return ds[split]
    if ds.split is not None and str(ds.split) != split:
        raise DataError(f"dataset folder {path} holds split {str(ds.split)!r}; got split={split!r}")
    return ds  # a dataset saved without a split name is taken to be the split asked for


class HFFolderSource(ImageSource):
    """A local Hugging Face dataset, read by index (memory-mapped Arrow)."""

    def __init__(self, name: str, ds: Any, resolution: int, *, image_field: str | None, caption_field: str | None):
        self.name, self.resolution = name, resolution
        self.description = f"Hugging Face dataset {name} ({len(ds)} rows)"
        self.image_col, self.caption_col = pick_columns(ds.column_names, image_field, caption_field, self.description)
        # The loaded dataset's own fingerprint: stable across processes (derived ones may not be).
        self._fingerprint = f"{ds._fingerprint}:{self.image_col}:{self.caption_col}:{len(ds)}"
        self.ds = _undecoded(ds.select_columns([self.image_col, self.caption_col]), self.image_col)
        if len(self.ds) == 0:
            raise DataError(f"{self.description} is empty")

    def __len__(self) -> int:
        return len(self.ds)

    def fingerprint(self) -> str:
        return self._fingerprint

    def item(self, i: int):
        return self.items([i])[0]

    def items(self, indices):
        rows = self.ds[[int(i) for i in indices]]  # one Arrow read for the whole batch
        out = []
        for i, image, caption in zip(indices, rows[self.image_col], rows[self.caption_col]):
            where = f"{self.description}, row {i}"
            out.append((image, _caption(caption, self.caption_col, where), where))
        return out


@dataclass
class HubStream:
    """A streamed Hub dataset: `open()` gives the `datasets.IterableDataset` of one split, with the
    image column undecoded; `num_examples` is the split size when the dataset's metadata states it."""

    name: str
    split: str
    image_col: str
    caption_col: str
    num_examples: int | None
    opener: Callable[[], Any]

    def open(self) -> Any:
        return _undecoded(self.opener(), self.image_col)

    def fingerprint(self) -> str:
        return f"{self.name}:{self.split}:{self.image_col}:{self.caption_col}"

    def row(self, record: dict, where: str) -> tuple[Any, str]:
        return record[self.image_col], _caption(record[self.caption_col], self.caption_col, where)


def load_hub_stream(name: str, split: str) -> Any:
    """`datasets.load_dataset(name, split=split, streaming=True)` (replaced in tests: no network)."""
    import datasets
    return datasets.load_dataset(name, split=split, streaming=True)


def hub_stream(name: str, split: str, *, image_field: str | None, caption_field: str | None) -> HubStream:
    """Open a Hub dataset's stream once to find its columns and split size."""
    def opener():
        try:
            return load_hub_stream(name, split)
        except Exception as e:  # offline, unknown name, no such split: say which dataset failed
            raise DataError(f"cannot stream Hugging Face dataset {name!r} split {split!r} "
                            f"({type(e).__name__}: {e})") from None
    ds = opener()
    columns = list(ds.column_names or next(iter(ds)).keys())  # some streams only show columns in a row
    image_col, caption_col = pick_columns(columns, image_field, caption_field, f"Hugging Face dataset {name}")
    splits = getattr(ds.info, "splits", None) or {}
    num = getattr(splits.get(split), "num_examples", None) if hasattr(splits, "get") else None
    return HubStream(name, split, image_col, caption_col, num or None, opener)
