"""Image-caption data: transforms, sources, layout invariance, exact resume, latent caches, errors."""

import contextlib
import io
import json
import pathlib
import re
import tarfile

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from titan_data import (
    DataError,
    build_dataloader,
    build_image_loader,
    encode_to_cache,
    load_tokenizer,
    make_synthetic_image_captions,
    write_webdataset,
)
from titan_data.images import hf
from titan_data.images.loader import global_order
from titan_data.images.transforms import image_tensor

R = 16


def take(loader, n):
    return [next(loader) for _ in range(n)]


def same(a, b):
    """Two batches are equal: every tensor, the captions and the ids."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k
    return True


def merged(batches):
    """The batches of several ranks for one step, as one global batch (rank order)."""
    return {k: (torch.cat([b[k] for b in batches]) if isinstance(batches[0][k], torch.Tensor)
                else sum((b[k] for b in batches), [])) for k in batches[0]}


def check_resume(make, steps, at, *, resume_layout=None):
    """Saving after `at` steps and loading into a fresh loader gives the reference's next batches."""
    ref = take(make(), steps)
    saved = make()
    take(saved, at)
    state = json.loads(json.dumps(saved.state_dict()))  # plain JSON values
    fresh = (resume_layout or make)()
    fresh.load_state_dict(state)
    for want in ref[at:]:
        assert same(next(fresh), want)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """10 samples in 4 shards (3 + 3 + 3 + 1): the webdataset used below."""
    folder = tmp_path_factory.mktemp("wds")
    samples = make_synthetic_image_captions(10, size=24, seed=5)
    return folder, write_webdataset(samples, folder, shard_size=3), samples


def tiny_encode(images, captions):
    # A stand-in for a frozen autoencoder + text encoders: three tensors of three dtypes.
    lengths = torch.tensor([len(c) for c in captions], dtype=torch.float32)
    return {"latents": F.avg_pool2d(images, 8), "t5": lengths[:, None, None].expand(-1, 3, 2).to(torch.bfloat16),
            "clip": images.mean(dim=(2, 3)).to(torch.float16)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "val"
    index = encode_to_cache("synthetic_shapes", tiny_encode, out, resolution=R, batch_size=10,
                            split="validation", shard_samples=24, num_workers=1)
    return out, index


def test_batches_have_the_documented_shapes_types_and_range():
    for res in (16, 48):
        b = next(build_image_loader("synthetic_shapes", resolution=res, local_batch_size=4))
        assert set(b) == {"images", "captions", "sample_ids"}
        assert b["images"].shape == (4, 3, res, res) and b["images"].dtype == torch.float32
        assert b["images"].min() >= -1 and b["images"].max() <= 1 and b["images"].std() > 0.1
        assert len(b["captions"]) == 4 and all(isinstance(c, str) and " background, " in c for c in b["captions"])
        assert b["sample_ids"].dtype == torch.int64 and b["sample_ids"].tolist() == [0, 1, 2, 3]


def test_transform_resizes_the_shorter_side_and_center_crops():
    img = PIL.Image.new("RGB", (128, 32), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 32, 32))  # a blue left quarter: cropped away by the center crop
    x = image_tensor(img, 16, "test")
    assert x.shape == (3, 16, 16) and torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[2], -torch.ones(16, 16))
    rgba = PIL.Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent: white, not black
    assert torch.allclose(image_tensor(rgba, 16, "test"), torch.ones(3, 16, 16))


def test_synthetic_set_is_deterministic_and_validation_differs():
    a, b = make_synthetic_image_captions(8, 32), make_synthetic_image_captions(8, 32)
    assert [(x.tobytes(), c) for x, c in a] == [(x.tobytes(), c) for x, c in b]
    other = make_synthetic_image_captions(8, 32, seed=1)
    assert all(x.tobytes() != y.tobytes() for (x, _), (y, _) in zip(a, other))
    train = next(build_image_loader("synthetic_shapes", resolution=R, local_batch_size=8, seed=1))
    val = next(build_image_loader("synthetic_shapes", resolution=R, local_batch_size=8, seed=1, split="validation"))
    assert not torch.equal(train["images"], val["images"])


def test_order_is_a_seeded_permutation_per_epoch():
    make = lambda seed: build_image_loader("synthetic_shapes", split="validation", resolution=R,  # noqa: E731
                                           local_batch_size=16, seed=seed)
    a, b, c = take(make(3), 8), take(make(3), 8), take(make(4), 8)
    assert all(same(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0]["images"], c[0]["images"])
    first, second = global_order(np.arange(64), 64, 3), global_order(np.arange(64, 128), 64, 3)
    assert sorted(first) == sorted(second) == list(range(64)) and not np.array_equal(first, second)
    assert torch.cat([x["sample_ids"] for x in a]).tolist() == list(range(128))


def test_one_rank_batch_4_equals_two_ranks_batch_2_and_four_ranks_batch_1():
    def make(dp, r, b):
        return build_image_loader("synthetic_shapes", split="validation", resolution=R, local_batch_size=b,
                                  dp_rank=r, dp_world_size=dp, seed=7)
    ref = take(make(1, 0, 4), 20)  # 64 samples / 4 per step: epoch 1 starts at step 16
    for dp, b in ((2, 2), (4, 1)):
        ranks = [make(dp, r, b) for r in range(dp)]
        for step in range(20):
            assert same(merged([next(ld) for ld in ranks]), ref[step]), (dp, step)


def test_exact_resume_synthetic_mid_epoch_across_epochs_and_on_another_layout():
    def make(dp=2, r=0, b=3, workers=0):
        return build_image_loader("synthetic_shapes", split="validation", resolution=R, local_batch_size=b,
                                  dp_rank=r, dp_world_size=dp, seed=2, num_workers=workers)
    for at in (4, 10, 11):  # global batch 6: batch 10 holds the last 4 samples of epoch 0 and 2 of epoch 1
        check_resume(make, 13, at)
    check_resume(make, 12, 10, resume_layout=lambda: make(workers=1))  # worker processes keep the order
    # the state of rank 0 of dp=2 x 3 resumes on dp=1 x 6: the same global batches follow
    ref = [merged([a, b]) for a, b in zip(take(make(r=0), 8), take(make(r=1), 8))]
    saved = make()
    take(saved, 5)
    single = make(dp=1, b=6)
    single.load_state_dict(saved.state_dict())
    assert all(same(next(single), want) for want in ref[5:])


def test_webdataset_round_trip(shards):
    folder, paths, samples = shards
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000003.tar"]
    with tarfile.open(paths[0]) as tf:
        assert tf.getnames() == ["00000000.png", "00000000.txt", "00000001.png", "00000001.txt",
                                 "00000002.png", "00000002.txt"]
    for dataset, path in (("webdataset", str(folder)), ("webdataset", str(folder / "*.tar")), (str(folder), None)):
        ld = build_image_loader(dataset, dataset_path=path, resolution=R, local_batch_size=10, infinite=False)
        assert ld.num_samples == 10
        (batch,) = list(ld)
        order = global_order(np.arange(10), 10, 0)
        assert batch["captions"] == [samples[i][1] for i in order]
        want = torch.stack([image_tensor(samples[i][0], R, "") for i in order])
        assert torch.equal(batch["images"], want)  # png is lossless: the very pixels come back
    one = build_image_loader("webdataset", dataset_path=str(paths[3]), resolution=R, local_batch_size=1)
    assert next(one)["captions"] == [samples[9][1]]
    with pytest.raises(DataError, match="already holds 4 .tar shards"):
        write_webdataset(samples, folder)


def test_exact_resume_webdataset_and_finite_passes(shards):
    folder = str(shards[0])

    def make(dp=2, r=0, b=2, infinite=True):
        return build_image_loader("webdataset", dataset_path=folder, resolution=R, local_batch_size=b,
                                  dp_rank=r, dp_world_size=dp, seed=1, infinite=infinite)
    for at in (1, 2, 3):  # 10 samples, global batch 4: batch 2 spans the epoch boundary
        check_resume(make, 6, at)
    # a finite pass drops the last incomplete global batch: 10 // 4 = 2 batches on every rank
    ranks = [list(make(r=r, infinite=False)) for r in range(2)]
    assert [len(x) for x in ranks] == [2, 2]
    assert sorted(torch.cat([b["sample_ids"] for x in ranks for b in x]).tolist()) == list(range(8))
    again = make(r=1, infinite=False)
    assert all(same(a, b) for a, b in zip(list(again), list(again)))  # iterating again: a fresh, equal pass


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _jpeg(color):
    buf = io.BytesIO()
    PIL.Image.new("RGB", (20, 40), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_webdataset_json_captions_fields_and_errors(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _tar(a / "x.tar", {"k1.jpg": _jpeg("red"), "k1.json": b'{"caption": "red", "alt": "rouge"}',
                       "k2.jpg": _jpeg("blue"), "k2.json": b'{"caption": "blue", "alt": "bleu"}'})
    batch = next(build_image_loader("webdataset", dataset_path=str(a), resolution=R, local_batch_size=2, seed=0))
    assert sorted(batch["captions"]) == ["blue", "red"] and batch["images"].shape == (2, 3, R, R)
    alt = next(build_image_loader("webdataset", dataset_path=str(a), resolution=R, local_batch_size=2,
                                  caption_field="alt"))
    assert sorted(alt["captions"]) == ["bleu", "rouge"]
    cases = [
        (str(tmp_path / "nope"), "webdataset dataset_path .*nope' does not exist"),
        (str(b), "holds no .tar shards"),
        (str(tmp_path / "*.tar"), "matches no .tar files"),
    ]
    for path, match in cases:
        with pytest.raises(DataError, match=match):
            build_image_loader("webdataset", dataset_path=path, resolution=R, local_batch_size=1)
    with pytest.raises(DataError, match="needs dataset_path"):
        build_image_loader("webdataset", resolution=R, local_batch_size=1)
    _tar(b / "s.tar", {"k1.png": _jpeg("red"), "k1.txt": b"ok", "k2.txt": b"no image"})
    with pytest.raises(DataError, match=r"shard .*s\.tar, sample 'k2'.*no image member"):
        build_image_loader("webdataset", dataset_path=str(b), resolution=R, local_batch_size=1)
    _tar(b / "s.tar", {"k1.png": _jpeg("red")})
    with pytest.raises(DataError, match=r"shard .*s\.tar, sample 'k1'.*no caption"):
        build_image_loader("webdataset", dataset_path=str(b), resolution=R, local_batch_size=1)
    with pytest.raises(DataError, match="no image member; expected one of webp"):
        build_image_loader("webdataset", dataset_path=str(a), resolution=R, local_batch_size=1, image_field="webp")


def test_local_hugging_face_folder(tmp_path):
    import datasets
    samples = make_synthetic_image_captions(6, size=32, seed=9)
    ds = datasets.Dataset.from_dict({"image": [im for im, _ in samples], "caption": [c for _, c in samples],
                                     "n": list(range(6))})
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(4))}).save_to_disk(str(tmp_path / "d"))
    ld = build_image_loader(str(tmp_path / "d"), resolution=R, local_batch_size=3, seed=4)
    batch = next(ld)
    order = global_order(np.arange(3), 6, 4)
    assert batch["captions"] == [samples[i][1] for i in order]
    assert torch.equal(batch["images"], torch.stack([image_tensor(samples[i][0], R, "") for i in order]))
    check_resume(lambda: build_image_loader(str(tmp_path / "d"), resolution=R, local_batch_size=4), 4, 1)
    val = build_image_loader(str(tmp_path / "d"), split="validation", resolution=R, local_batch_size=4)
    assert val.num_samples == 4
    with pytest.raises(DataError, match="has splits train, validation; got split='test'"):
        build_image_loader(str(tmp_path / "d"), split="test", resolution=R, local_batch_size=1)
    datasets.Dataset.from_dict({"picture": [samples[0][0]], "label": ["x"]}).save_to_disk(str(tmp_path / "e"))
    with pytest.raises(DataError, match="no image column .*its columns are picture, label: pass image_field"):
        build_image_loader(str(tmp_path / "e"), resolution=R, local_batch_size=1)
    with pytest.raises(DataError, match="no caption column .*its columns are picture, label"):
        build_image_loader(str(tmp_path / "e"), image_field="picture", resolution=R, local_batch_size=1)
    b = next(build_image_loader(str(tmp_path / "e"), image_field="picture", caption_field="label",
                                resolution=R, local_batch_size=1))
    assert b["captions"] == ["x"]


def test_hub_stream_is_split_by_rank_and_resumes_exactly(monkeypatch, tmp_path):
    import datasets
    samples = make_synthetic_image_captions(9, size=16, seed=3)
    table = datasets.Dataset.from_dict({"jpg": [im for im, _ in samples], "txt": [c for _, c in samples]})
    monkeypatch.setattr(hf, "load_hub_stream", lambda name, split: table.to_iterable_dataset(num_shards=3))

    def make(dp=1, r=0, b=2, **kw):
        return build_image_loader("someone/shapes-wds", resolution=R, local_batch_size=b, dp_rank=r,
                                  dp_world_size=dp, **kw)
    first = next(make())
    assert first["captions"] == [samples[0][1], samples[1][1]] and first["sample_ids"].tolist() == [0, 1]
    assert first["images"].shape == (2, 3, R, R)
    check_resume(make, 7, 3)  # 9 rows, batch 2: batch 4 spans the end of the stream
    check_resume(lambda: make(dp=3, r=1), 5, 2)
    ids = [next(make(dp=3, r=r))["sample_ids"].tolist() for r in range(3)]
    assert ids == [[0, 1], [2, 3], [4, 5]]
    saved = make(dp=3, r=1)
    next(saved)
    with pytest.raises(DataError, match="dp_world_size=3, this loader has dp_world_size=1: a streamed dataset"):
        make().load_state_dict(saved.state_dict())
    assert len(list(make(b=4, infinite=False))) == 2  # size unknown, one rank: the stream's end ends the pass
    with pytest.raises(DataError, match="does not state the size of split 'train', so 2 ranks cannot agree"):
        make(dp=2, infinite=False)
    with pytest.raises(DataError, match="num_workers=2: a streamed Hub dataset"):
        make(num_workers=2)
    index = encode_to_cache("someone/shapes-wds", tiny_encode, tmp_path / "c", resolution=R, batch_size=4,
                            max_samples=6)
    assert index["count"] == 6 and [s["count"] for s in index["shards"]] == [6]


def test_hub_stream_of_stated_size_gives_every_rank_the_same_pass(monkeypatch):
    import datasets
    samples = make_synthetic_image_captions(9, size=16, seed=3)
    table = datasets.Dataset.from_dict({"image": [im for im, _ in samples], "caption": [c for _, c in samples]})

    def stream(name, split):  # shards of 5 and 4 rows, and the split size in the metadata
        it = table.to_iterable_dataset(num_shards=2)
        it.info.splits = datasets.SplitDict({"train": datasets.SplitInfo("train", num_examples=9)})
        return it
    monkeypatch.setattr(hf, "load_hub_stream", stream)
    ranks = [list(build_image_loader("a/b", resolution=R, local_batch_size=2, dp_rank=r, dp_world_size=2,
                                     infinite=False)) for r in range(2)]
    assert [len(x) for x in ranks] == [2, 2]  # 9 // (2 x 2)
    single = list(build_image_loader("a/b", resolution=R, local_batch_size=4, infinite=False))
    assert [b["captions"] for b in single] == [[c for _, c in samples[:4]], [c for _, c in samples[4:8]]]


def test_latent_cache_round_trip(cache):
    out, index = cache
    assert index["count"] == 64 and [s["count"] for s in index["shards"]] == [24, 24, 16]
    assert index["tensors"] == {"latents": {"shape": [3, 2, 2], "dtype": "float32"},
                                "t5": {"shape": [3, 2], "dtype": "bfloat16"}, "clip": {"shape": [3], "dtype": "float16"}}
    assert json.loads((out / "index.json").read_text())["resolution"] == R
    kw = dict(resolution=R, local_batch_size=8, seed=5, split="validation")
    lat = take(build_image_loader("latent_cache", dataset_path=str(out), **kw), 10)
    img = take(build_image_loader("synthetic_shapes", **kw), 10)
    for a, b in zip(lat, img):  # the same samples in the same order, pre-encoded
        assert set(a) == {"latents", "t5", "clip", "captions", "sample_ids"}
        assert a["captions"] == b["captions"] and torch.equal(a["sample_ids"], b["sample_ids"])
        want = tiny_encode(b["images"], b["captions"])
        assert all(torch.equal(a[k], want[k]) for k in want)
    st = pytest.importorskip("safetensors.torch")  # the files are standard safetensors
    assert st.load_file(str(out / "shard-00002.safetensors"))["latents"].shape == (16, 3, 2, 2)


def test_exact_resume_latent_cache(cache):
    def make(dp=2, r=1, b=5):
        return build_image_loader(str(cache[0]), split="validation", resolution=R, local_batch_size=b,
                                  dp_rank=r, dp_world_size=dp)
    for at in (2, 6, 7):  # global batch 10 over 64 samples: batch 6 spans the epoch boundary
        check_resume(make, 9, at)


def test_latent_cache_errors(cache, tmp_path):
    out = str(cache[0])
    with pytest.raises(DataError, match="has no index.json"):
        build_image_loader("latent_cache", dataset_path=str(tmp_path), resolution=R, local_batch_size=1)
    with pytest.raises(DataError, match="encoded at resolution=16; the loader asks for resolution=32"):
        build_image_loader("latent_cache", dataset_path=out, split="validation", resolution=32, local_batch_size=1)
    with pytest.raises(DataError, match="holds split 'validation'; got split='train'"):
        build_image_loader("latent_cache", dataset_path=out, resolution=R, local_batch_size=1)
    with pytest.raises(DataError, match="is not empty"):
        encode_to_cache("synthetic_shapes", tiny_encode, out, resolution=R, batch_size=4)
    with pytest.raises(DataError, match=r"'z' of shape \(3,\); dim 0 must be the batch \(4\)"):
        encode_to_cache("synthetic_shapes", lambda x, c: {"z": torch.zeros(3)}, tmp_path / "n", resolution=R,
                        batch_size=4)


def test_argument_and_state_errors():
    with pytest.raises(DataError, match="unknown image dataset 'synthetic_shape'.*latent_cache, synthetic_shapes, "
                                        "webdataset; did you mean 'synthetic_shapes'"):
        build_image_loader("synthetic_shape", resolution=R, local_batch_size=1)
    for res in (0, 30, 8, -16, 16.0, True):
        with pytest.raises(DataError, match="resolution must be a positive multiple of 16"):
            build_image_loader("synthetic_shapes", resolution=res, local_batch_size=1)
    for kw, match in ((dict(local_batch_size=0), "local_batch_size must be a positive integer"),
                      (dict(dp_rank=2, dp_world_size=2), r"dp_rank must be an integer in \[0, dp_world_size=2\)"),
                      (dict(split="test"), "'synthetic_shapes' has splits train, validation; got split='test'"),
                      (dict(dataset_path="x"), "takes no dataset_path"),
                      (dict(caption_field="txt"), "takes no caption_field"),
                      (dict(local_batch_size=100, dp_world_size=3, infinite=False), "fewer than one global batch")):
        with pytest.raises(DataError, match=match):
            build_image_loader("synthetic_shapes", **({"resolution": R, "local_batch_size": 1} | kw))
    with pytest.raises(DataError, match="dataset path './no/such' does not exist"):
        build_image_loader("./no/such", resolution=R, local_batch_size=1)
    ld = build_image_loader("synthetic_shapes", resolution=R, local_batch_size=2)
    state = ld.state_dict()
    for kw, key in ((dict(resolution=32), "resolution"),
                    (dict(split="validation"), "num_samples"), (dict(seed=1), "seed")):
        with pytest.raises(DataError, match=f"data loader state has {key}="):
            build_image_loader("synthetic_shapes", **({"resolution": R, "local_batch_size": 2} | kw)).load_state_dict(state)
    next(ld)  # 2 samples consumed: a layout of 4 per loader step cannot continue the stream, one of 1 x 2 ranks can
    with pytest.raises(DataError, match="consumed 2 samples, not a multiple of .* = 4"):
        build_image_loader("synthetic_shapes", resolution=R, local_batch_size=4).load_state_dict(ld.state_dict())
    two = build_image_loader("synthetic_shapes", resolution=R, local_batch_size=1, dp_rank=1, dp_world_size=2)
    two.load_state_dict(ld.state_dict())
    assert next(two)["sample_ids"].tolist() == [3]
    with pytest.raises(DataError, match="state has dataset='webdataset', this loader has dataset='synthetic_shapes'"):
        ld.load_state_dict(dict(state, dataset="webdataset"))
    tokens = build_dataloader("tiny", tokenizer=load_tokenizer(), seq_len=8, local_batch_size=2)
    with pytest.raises(DataError, match="cannot load a 'pretokenized' data loader state"):
        ld.load_state_dict(tokens.state_dict())


def test_readme_image_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", readme.split("## Image-caption data")[1], re.S)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    assert out.getvalue().splitlines() == [
        "a black circle on a blue background, top left", "3", "(4, 3, 32, 32) [44, 45, 46, 47]", "True", "40",
        "['captions', 'latents', 'sample_ids'] (4, 3, 4, 4)"]
