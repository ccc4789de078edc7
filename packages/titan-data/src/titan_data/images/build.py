"""`build_image_loader`: a dataset name or path and a layout -> a checkpointable image loader."""

from __future__ import annotations

import pathlib

from titan_data.errors import DataError, check_positive, unknown_name
from titan_data.images import hf
from titan_data.images.latent_cache import INDEX, LatentCacheSource
from titan_data.images.loader import ImageCaptionLoader, MapImageLoader
from titan_data.images.source import MapSource
from titan_data.images.stream import StreamImageLoader
from titan_data.images.synthetic import SyntheticShapes
from titan_data.images.transforms import check_resolution
from titan_data.images.webdataset import WebDatasetSource, find_shards

IMAGE_DATASETS: dict[str, str] = {
    "synthetic_shapes": "drawn colored shapes with exact captions, made in memory (train 256, validation 64)",
    "webdataset": "local WebDataset .tar shards at dataset_path (a folder, a .tar file or a glob)",
    "latent_cache": "a folder written by encode_to_cache at dataset_path",
}
# Besides these names: a Hugging Face Hub id ("owner/name", streamed) or a local dataset folder.


def _split_path(dataset_path: str | None, split: str) -> str | None:
    """`{dataset_path}/{split}/` when it exists, else dataset_path itself (taken to be that split)."""
    if dataset_path and (pathlib.Path(dataset_path).expanduser() / split).is_dir():
        return str(pathlib.Path(dataset_path).expanduser() / split)
    return dataset_path


def _no(what: str, value: object, dataset: str, hint: str = "") -> None:
    if value is not None:
        raise DataError(f"dataset {dataset!r} takes no {what} (got {value!r}){hint}")


def open_image_source(dataset: str, *, resolution: int, dataset_path: str | None = None, split: str = "train",
                      caption_field: str | None = None, image_field: str | None = None) -> MapSource | hf.HubStream:
    """The samples of one split in base order: a map-style source, or a Hub stream."""
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"dataset must be a name ({', '.join(IMAGE_DATASETS)}), a Hugging Face dataset id "
                        f"or a path, got {dataset!r}")
    fields = (("caption_field", caption_field), ("image_field", image_field))
    if dataset in ("synthetic_shapes", "latent_cache"):
        for key, value in fields:
            _no(key, value, dataset, ": fields apply to webdataset and Hugging Face datasets")
    if dataset == "synthetic_shapes":
        _no("dataset_path", dataset_path, dataset, ": it is drawn in memory; use 'webdataset' for your own shards")
        return SyntheticShapes(split, resolution)
    if dataset == "webdataset":
        return WebDatasetSource(find_shards(_split_path(dataset_path, split)), resolution,
                                image_field=image_field, caption_field=caption_field)
    if dataset == "latent_cache":
        return LatentCacheSource(dataset_path, split, resolution)
    path = pathlib.Path(dataset).expanduser()
    if path.exists():
        if dataset_path:
            raise DataError(f"dataset {dataset!r} is a path and dataset_path {dataset_path!r} is given too: give it once")
        if path.is_dir() and ((path / INDEX).is_file() or (path / split / INDEX).is_file()):
            return open_image_source("latent_cache", resolution=resolution, dataset_path=str(path), split=split,
                                     caption_field=caption_field, image_field=image_field)
        if path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar"))):
            return open_image_source("webdataset", resolution=resolution, dataset_path=str(path), split=split,
                                     caption_field=caption_field, image_field=image_field)
        ds = hf.open_hf_folder(path, split)
        return hf.HFFolderSource(str(path), ds, resolution, image_field=image_field, caption_field=caption_field)
    if dataset.startswith(("/", ".", "~")) or dataset.count("/") > 1:
        raise DataError(f"dataset path {dataset!r} does not exist")
    if "/" in dataset:
        _no("dataset_path", dataset_path, dataset, ": a Hub id names the dataset itself")
        return hf.hub_stream(dataset, split, image_field=image_field, caption_field=caption_field)
    raise unknown_name("image dataset", dataset, IMAGE_DATASETS)


def check_layout(local_batch_size: int, dp_rank: int, dp_world_size: int, seed: int, num_workers: int,
                 split: str) -> None:
    check_positive("local_batch_size", local_batch_size)
    check_positive("dp_world_size", dp_world_size)
    if isinstance(dp_rank, bool) or not isinstance(dp_rank, int) or not 0 <= dp_rank < dp_world_size:
        raise DataError(f"dp_rank must be an integer in [0, dp_world_size={dp_world_size}), got {dp_rank!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if not isinstance(split, str) or not split:
        raise DataError(f"split must be a non-empty string such as 'train' or 'validation', got {split!r}")


def build_image_loader(
    dataset: str,
    *,
    resolution: int,
    local_batch_size: int,
    dp_rank: int = 0,
    dp_world_size: int = 1,
    dataset_path: str | None = None,
    seed: int = 0,
    infinite: bool = True,
    split: str = "train",
    caption_field: str | None = None,
    image_field: str | None = None,
    num_workers: int = 0,
) -> ImageCaptionLoader:
    """A loader of {"images" [B, 3, R, R] in [-1, 1], "captions", "sample_ids"} for one dp rank.

    `dataset`: "synthetic_shapes", "webdataset" (tar shards at dataset_path), "latent_cache"
    (a folder from encode_to_cache; yields its tensors instead of "images"), a Hugging Face Hub id
    (streamed) or a local dataset folder / shard folder / cache folder given as a path.
    Map-style datasets (all but Hub ids) are read in a seeded permutation per epoch, identical for
    every layout, and resume on any dp degree with the same global batch; Hub streams are split by
    rank and resume on the same layout only. Every user mistake raises DataError first.
    """
    resolution = check_resolution(resolution)
    check_layout(local_batch_size, dp_rank, dp_world_size, seed, num_workers, split)
    source = open_image_source(dataset, resolution=resolution, dataset_path=dataset_path, split=split,
                               caption_field=caption_field, image_field=image_field)
    if isinstance(source, hf.HubStream):
        if num_workers:
            raise DataError(f"num_workers={num_workers}: a streamed Hub dataset is read and decoded in the "
                            "main process; use num_workers=0 (or a local copy, which supports workers)")
        return StreamImageLoader(source, resolution=resolution, local_batch_size=local_batch_size,
                                 dp_rank=dp_rank, dp_world_size=dp_world_size, infinite=infinite)
    return MapImageLoader(source, resolution=resolution, local_batch_size=local_batch_size, dp_rank=dp_rank,
                          dp_world_size=dp_world_size, seed=seed, num_workers=num_workers, infinite=infinite)
