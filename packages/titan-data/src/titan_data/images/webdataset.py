"""WebDataset tar shards: a writer, and a map-style reader that indexes member offsets once.

A sample is the tar members sharing a key (the member path up to the first "." of its file name):
`000001.png` + `000001.txt` form sample "000001". The reader lists every member's data offset
once, so sample i is two `pread`s at any time, in any process: random access, exact resume.
Only uncompressed .tar shards can be read this way.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import pathlib
import tarfile
from collections.abc import Iterable

import numpy as np
import PIL.Image

from titan_data.errors import DataError, check_positive
from titan_data.images.source import ImageSource

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_TEXT, _JSON = 0, 1


def write_webdataset(samples: Iterable[tuple[PIL.Image.Image | bytes, str]], folder: str | os.PathLike, *,
                     shard_size: int = 1000, image_format: str = "png") -> list[pathlib.Path]:
    """Write (image, caption) pairs as shards `shard-000000.tar`, ... of `shard_size` samples each,
    holding `{key}.{png|jpg}` + `{key}.txt` (key = the sample's 8-digit number). Images given as
    bytes are stored as they are (already encoded as `image_format`). Returns the shard paths.
    """
    check_positive("shard_size", shard_size)
    if image_format not in ("png", "jpg"):
        raise DataError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    root = pathlib.Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if existing := sorted(root.glob("*.tar")):
        raise DataError(f"{root} already holds {len(existing)} .tar shards (e.g. {existing[0].name}): "
                        "write a webdataset into an empty folder so two datasets are never mixed")
    paths: list[pathlib.Path] = []
    tar = None
    try:
        for i, (image, caption) in enumerate(samples):
            if i % shard_size == 0:
                _close_shard(tar, paths)
                tar = _open_shard(root, len(paths))
            if isinstance(image, PIL.Image.Image):
                buf = io.BytesIO()
                image.save(buf, format="PNG" if image_format == "png" else "JPEG", quality=95)
                image = buf.getvalue()
            _add(tar, f"{i:08d}.{image_format}", bytes(image))
            _add(tar, f"{i:08d}.txt", str(caption).encode())
    except BaseException:
        if tar is not None:  # no half-written shard is left behind
            tar[0].close()
            tar[1].with_suffix(".tar.tmp").unlink(missing_ok=True)
        raise
    _close_shard(tar, paths)
    return paths


def _open_shard(root: pathlib.Path, n: int) -> tuple[tarfile.TarFile, pathlib.Path]:
    # Written under a temporary name and renamed when complete: a crash leaves no half shard.
    final = root / f"shard-{n:06d}.tar"
    return tarfile.open(final.with_suffix(".tar.tmp"), "w", format=tarfile.USTAR_FORMAT), final


def _close_shard(tar, paths: list[pathlib.Path]) -> None:
    if tar is not None:
        tar[0].close()
        os.replace(tar[1].with_suffix(".tar.tmp"), tar[1])
        paths.append(tar[1])


def _add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: identical bytes each time
    tar[0].addfile(info, io.BytesIO(data))


def find_shards(dataset_path: str | None) -> list[pathlib.Path]:
    """The .tar shards of a folder, a single .tar file or a glob pattern, sorted by name."""
    if not dataset_path:
        raise DataError("dataset 'webdataset' needs dataset_path: a folder of .tar shards, a .tar file or a glob")
    text = str(dataset_path)
    if any(c in text for c in "*?["):
        shards = sorted(pathlib.Path(p) for p in glob.glob(os.path.expanduser(text)) if p.endswith(".tar"))
        if not shards:
            raise DataError(f"webdataset dataset_path glob {text!r} matches no .tar files")
        return shards
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        raise DataError(f"webdataset dataset_path {text!r} does not exist")
    if path.is_file():
        if not path.name.endswith(".tar"):
            raise DataError(f"webdataset dataset_path {text!r} is not a .tar file (compressed shards cannot "
                            "be read by offset: decompress them to .tar)")
        return [path]
    shards = sorted(path.glob("*.tar"))
    if not shards:
        others = sorted(p.name for p in path.iterdir())[:5]
        raise DataError(f"webdataset folder {text!r} holds no .tar shards (found: {', '.join(others) or 'nothing'}; "
                        "compressed shards must be decompressed to .tar)")
    return shards


def _split_name(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class WebDatasetSource(ImageSource):
    """Every sample of some tar shards, in shard order then member order."""

    name = "webdataset"

    def __init__(self, shards: list[pathlib.Path], resolution: int, *, image_field: str | None = None,
                 caption_field: str | None = None):
        self.shards, self.resolution = [str(s) for s in shards], resolution
        self.image_field, self.caption_field = image_field, caption_field
        self.description = f"webdataset {shards[0].parent} ({len(shards)} shards)"
        rows: list[tuple] = []
        self.keys: list[str] = []
        for s, shard in enumerate(shards):
            for key, members, tf in self._samples(shard):
                rows.append((s, *self._pick(shard, key, members, tf)))
                self.keys.append(key)
        if not rows:
            raise DataError(f"{self.description} holds no samples")
        table = np.asarray([r[:5] for r in rows], dtype=np.int64)
        self._shard, self._img_off, self._img_size, self._cap_off, self._cap_size = table.T.copy()
        self._cap_json = [r[5] for r in rows]  # None for a text member, else the json key
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _samples(self, shard: pathlib.Path):
        try:
            tf = tarfile.open(shard, "r:")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"webdataset shard {shard} is not a readable uncompressed tar ({e})") from None
        with tf:
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = _split_name(m.name)
                if ext in groups.setdefault(key, {}):
                    raise DataError(f"webdataset shard {shard}: sample {key!r} has two {ext!r} members")
                groups[key][ext] = m
            for key, members in groups.items():
                yield key, members, tf

    def _pick(self, shard, key: str, members: dict[str, tarfile.TarInfo], tf: tarfile.TarFile) -> tuple:
        where = f"webdataset shard {shard}, sample {key!r} (members: {', '.join(sorted(members))})"
        wanted = (self.image_field,) if self.image_field else IMAGE_EXTS
        img = next((members[e] for e in wanted if e in members), None)
        if img is None:
            raise DataError(f"{where}: no image member; expected one of {', '.join(wanted)} "
                            "(set image_field to the image's extension)")
        field = self.caption_field or "txt"
        if field in members:
            cap, json_key = members[field], None
        elif "json" in members:
            cap, json_key = members["json"], (self.caption_field or "caption")
            meta = json.loads(tf.extractfile(cap).read() or b"{}")
            if not isinstance(meta, dict) or not isinstance(meta.get(json_key), str):
                raise DataError(f"{where}: no {field!r} member and its json has no string {json_key!r}")
        else:
            raise DataError(f"{where}: no caption; expected a {field!r} member or a json with "
                            f"{self.caption_field or 'caption'!r} (set caption_field)")
        return img.offset_data, img.size, cap.offset_data, cap.size, json_key

    def __len__(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> str:
        sig = [(pathlib.Path(s).name, os.path.getsize(s)) for s in self.shards]
        return hashlib.sha256(json.dumps([sig, len(self), self.image_field, self.caption_field]).encode()).hexdigest()[:16]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}  # file descriptors stay in the process that opened them

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return os.pread(self._fds[shard], int(size), int(offset))

    def item(self, i: int):
        s = int(self._shard[i])
        where = f"webdataset shard {self.shards[s]}, sample {self.keys[i]!r}"
        image = self._read(s, self._img_off[i], self._img_size[i])
        text = self._read(s, self._cap_off[i], self._cap_size[i]).decode("utf-8", errors="replace")
        caption = text.strip() if self._cap_json[i] is None else json.loads(text)[self._cap_json[i]]
        return image, caption, where

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
