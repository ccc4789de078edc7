"""The two async save modes, on top of dcp.async_save.

"async": the state is copied, while the caller waits, into CPU buffers allocated at the first
save and reused (pinned when CUDA is available, so the copy runs at full bus speed); then a
background thread serializes and writes it. No extra process.

"async_with_pinned_mem": the state is copied into pinned, shared CPU buffers that are allocated
once and reused; on GPU the copy runs on a side stream in the background (the caller must call
`wait_for_staging()` before changing the parameters), and a background *process* writes, so
serialization never holds the training process's GIL. Without a process group (one process)
the writer is a thread. The buffers are built and filled with the (private) helpers of
torch.distributed._state_dict_utils that DCP's own BlockingAsyncStager uses.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

from .dcp_io import dist_on, explain

ASYNC_MODES: dict[str, str] = {
    "disabled": "save() blocks until every rank's data is written",
    "async": "save() blocks while the state is copied into reused CPU buffers; a thread writes",
    "async_with_pinned_mem": "reused pinned shared buffers, background copy on GPU, a process writes",
}


class ReusedBufferStager(AsyncStager):
    """Copies the state into CPU buffers allocated once (pinned on CUDA machines) and reused.

    background=True (GPU only): the copy runs in a thread on a side stream, after the work
    already queued on the caller's stream (so it sees the values at save time); the returned
    future completes when the copy has landed. shared=True puts the buffers in shared memory
    for a writer process. torch's DefaultStager is not used: in some releases (2.11) it drops
    its buffers after every save and then fails on the next one.
    """

    _synchronize_after_execute = False

    def __init__(self, *, background: bool, shared: bool) -> None:
        self.gpu = torch.cuda.is_available()
        self.shared = shared
        self._buffers: Any = None
        background = background and self.gpu
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="titan-ckpt-stage") if background else None
        self._stream = torch.cuda.Stream() if background else None

    def stage(self, state_dict: Any, **kwargs: Any) -> Any:
        from torch.distributed._state_dict_utils import _create_cpu_state_dict

        if self._buffers is None or not _same_structure(self._buffers, state_dict):
            self._buffers = _create_cpu_state_dict(state_dict, pin_memory=self.gpu,
                                                   share_memory=self.shared)
        if self._executor is None:
            return self._copy(state_dict, None)
        ready = torch.cuda.Event()
        ready.record()  # the values as of now, on the caller's stream
        return self._executor.submit(self._copy, state_dict, ready)

    def _copy(self, state_dict: Any, ready: Any) -> Any:
        from torch.distributed._state_dict_utils import _copy_state_dict

        if self._stream is None:
            return _copy_state_dict(state_dict, self._buffers, type_check=False)
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            out = _copy_state_dict(state_dict, self._buffers, non_blocking=True, type_check=False)
        self._stream.synchronize()
        return out

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        """Kept open across saves (some torch releases close a stager after each save)."""

    def release(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._buffers = None


def _same_structure(a: Any, b: Any) -> bool:
    """Same nested keys and same tensor shapes/dtypes: the cached buffers still fit."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_structure(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_structure(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape
                and a.dtype == b.dtype and type(a) is type(b))
    return True


class AsyncSaver:
    """Starts background saves for one async mode; keeps the reusable stager between saves."""

    def __init__(self, mode: str, process_group: Any) -> None:
        self.mode = mode
        self.process_group = process_group
        self._stager: Any = None
        self._staging: Future | None = None

    def start(self, state: dict[str, Any], folder: str | os.PathLike) -> Future:
        """Begin saving `state` into `folder`; the future completes when the write is done."""
        self.wait_for_staging()
        kwargs: dict[str, Any] = dict(storage_writer=dcp.FileSystemWriter(folder),
                                      process_group=self.process_group, no_dist=not dist_on())
        pinned = self.mode == "async_with_pinned_mem"
        self._stager = self._stager or ReusedBufferStager(background=pinned, shared=pinned)
        kwargs["async_stager"] = self._stager
        kwargs["async_checkpointer_type"] = (
            AsyncCheckpointerType.PROCESS if pinned and dist_on() else AsyncCheckpointerType.THREAD)
        try:
            out = dcp.async_save(state, **kwargs)
        except (Exception, CheckpointException) as e:
            raise explain(e, folder, "staging the async save into") from e
        if hasattr(out, "upload_completion"):  # AsyncSaveResponse: staging runs in background
            self._staging = out.staging_completion
            return out.upload_completion
        return out

    def staged_bytes(self) -> int:
        """Bytes of the CPU copy the last save staged (what it had to write from this rank)."""
        from .dcp_io import state_bytes

        return state_bytes(self._stager._buffers) if self._stager is not None else 0

    def wait_for_staging(self) -> None:
        if self._staging is not None:
            staging, self._staging = self._staging, None
            staging.result()

    def close(self) -> None:
        self.wait_for_staging()
        if self._stager is not None:
            self._stager.release()
            self._stager = None
