"""Damaged or hostile checkpoints fail with a CheckpointError naming the file; no pickled code runs."""

import io
import os
import pickle

import pytest
import torch
from ckpt_testlib import make_model
from titan_ckpt import CheckpointError, CheckpointManager, ModelState, load_model_weights


@pytest.fixture()
def saved(tmp_path):
    model = make_model()
    mgr = CheckpointManager(tmp_path, interval=1)
    mgr.save(1, {"model": ModelState(model), "train_state": {"step": 1, "note": "ok"}})
    return tmp_path, tmp_path / "step-1"


def _load(folder):
    return CheckpointManager(folder, interval=1).load(
        {"model": ModelState(make_model(seed=3)), "train_state": {"step": 0, "note": ""}})


def _data_file(path):
    return next(p for p in path.iterdir() if p.suffix == ".distcp")


def test_truncated_data_file_is_named(saved):
    folder, path = saved
    data = _data_file(path)
    data.write_bytes(data.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=rf"{data}.* is truncated: 500 bytes, but the checkpoint metadata needs \d+"):
        _load(folder)


def test_corrupted_data_file_is_named(saved):
    folder, path = saved
    data = _data_file(path)
    raw = bytearray(data.read_bytes())
    raw[:64] = b"\xff" * 64  # the first record's header
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{data} is corrupted"):
        _load(folder)


def test_truncated_and_missing_metadata_are_named(saved):
    folder, path = saved
    meta = path / ".metadata"
    meta.write_bytes(meta.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=rf"{meta} is truncated or corrupted"):
        _load(folder)
    meta.unlink()
    with pytest.raises(CheckpointError, match=r"\.metadata does not exist"):
        _load(folder)


def test_damaged_marker_is_named_and_never_skipped_silently(saved):
    folder, path = saved
    marker = path / "titan-complete.json"
    marker.write_text("{not json")
    mgr = CheckpointManager(folder, interval=1)
    assert mgr.latest_step() is None  # not complete: never loaded as if it were
    with pytest.raises(CheckpointError, match=rf"{marker} is corrupted"):
        mgr.load({"model": ModelState(make_model())}, step=1)
    # auto-resume does not fall back to the start (or an older step) without saying so
    with pytest.raises(CheckpointError, match=rf"{marker} is corrupted.*is damaged, so resuming would silently "
                                              "go back to the start"):
        _load(folder)
    older = CheckpointManager(folder, interval=1)
    older.save(0, {"model": ModelState(make_model()), "train_state": {"step": 0, "note": ""}})
    with pytest.raises(CheckpointError, match="go back to step 0"):
        _load(folder)


RAN: list[str] = []


def record_call(what):
    """Stands in for os.system in a hostile pickle: it records that it ran."""
    RAN.append(what)
    return what


class _Boom:
    def __reduce__(self):
        return (record_call, ("pwned",))


def test_metadata_pickle_with_code_is_refused_without_running_it(saved):
    folder, path = saved
    meta = path / ".metadata"
    original = pickle.loads(meta.read_bytes())
    original.storage_meta.modules = [_Boom()]
    meta.write_bytes(pickle.dumps(original))
    with pytest.raises(CheckpointError, match=r"references test_ckpt_safety\.record_call.*refusing"):
        _load(folder)
    assert RAN == []


def test_non_tensor_values_are_loaded_weights_only(saved):
    folder, path = saved
    # Rewrite the checkpoint so that the "note" entry is a pickled callable.
    model = make_model()
    mgr = CheckpointManager(folder, interval=1)
    mgr.save(2, {"model": ModelState(model), "train_state": {"step": 2, "note": _Boom()}})
    with pytest.raises(CheckpointError, match=r"'train_state\.note' is not plain data"):
        CheckpointManager(folder, interval=1).load(
            {"model": ModelState(make_model()), "train_state": {"step": 0, "note": ""}})
    assert RAN == []


def test_metadata_naming_files_outside_the_folder_is_refused(saved, tmp_path_factory):
    folder, path = saved
    meta = path / ".metadata"
    md = pickle.loads(meta.read_bytes())
    for info in md.storage_data.values():
        info.relative_path = "../../../etc/passwd"
    meta.write_bytes(pickle.dumps(md))
    with pytest.raises(CheckpointError, match=r"names data file '\.\./\.\./\.\./etc/passwd'.*refusing"):
        load_model_weights(path, make_model())


def test_step_folder_linked_outside_the_checkpoint_folder_is_not_used(saved, tmp_path_factory):
    folder, path = saved
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.replace(path, elsewhere / "step-1")
    os.symlink(elsewhere / "step-1", folder / "step-1")
    mgr = CheckpointManager(folder, interval=1)
    assert mgr.latest_step() is None
    with pytest.raises(CheckpointError, match="link out of the checkpoint folder"):
        mgr.save(1, {"model": ModelState(make_model())})


def test_tensor_payload_holding_code_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.ones(3)}, checkpoint_id=str(tmp_path), no_dist=True)
    data = _data_file(tmp_path)
    payload = io.BytesIO()
    torch.save(_Boom(), payload)
    data.write_bytes(payload.getvalue())
    meta = tmp_path / ".metadata"
    md = pickle.loads(meta.read_bytes())
    for info in md.storage_data.values():
        info.length = len(payload.getvalue())
    meta.write_bytes(pickle.dumps(md))
    from titan_ckpt.dcp_io import load_dcp

    with pytest.raises(CheckpointError, match=rf"{data} is corrupted: UnpicklingError"):
        load_dcp({"w": torch.zeros(3)}, tmp_path)
    assert RAN == []
