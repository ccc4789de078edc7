"""The two async save modes, on top of dcp.async_save.

"async": the state is copied to fresh CPU memory while the caller waits (DCP's blocking stager),
then a background thread serializes and writes it. Light: no extra process, no pinned memory.

"async_with_pinned_mem": the state is copied into pinned, shared CPU buffers that are allocated
once and reused; on GPU the copy runs on a side stream in the background (the caller must call
`wait_for_staging()` before changing the parameters), and a background *process* writes, so
serialization never holds the training process's GIL. Without a process group (one process)
the writer is a thread.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

from .dcp_io import dist_on, explain

ASYNC_MODES: dict[str, str] = {
    "disabled": "save() blocks until every rank's data is written",
    "async": "save() blocks while the state is copied to CPU; a thread writes",
    "async_with_pinned_mem": "reused pinned CPU buffers, background copy on GPU, a process writes",
}


class _KeepOpenStager(AsyncStager):
    """Forwards to a DefaultStager but ignores close() from async_save.

    Some torch versions (2.11) close the stager handed to async_save once the upload is done,
    which empties its copy tables and cached buffers; this one is reused across saves and
    closed by the AsyncSaver itself.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def should_synchronize_after_execute(self) -> bool:
        return self.inner.should_synchronize_after_execute

    def stage(self, state_dict: Any, **kwargs: Any) -> Any:
        return self.inner.stage(state_dict, **kwargs)

    def synchronize_staging(self) -> None:
        self.inner.synchronize_staging()

    def close(self) -> None:
        pass


class AsyncSaver:
    """Starts background saves for one async mode; keeps the reusable stager between saves."""

    def __init__(self, mode: str, process_group: Any) -> None:
        self.mode = mode
        self.process_group = process_group
        self._stager: Any = None
        self._staging: Future | None = None

    def _pinned_stager(self) -> Any:
        if self._stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            gpu = torch.cuda.is_available()
            # Pinned memory, background staging and non-blocking copies need an accelerator;
            # shared memory lets the writer process read the buffers without a copy.
            self._stager = _KeepOpenStager(DefaultStager(StagingOptions(
                use_pinned_memory=gpu, use_shared_memory=True,
                use_async_staging=gpu, use_non_blocking_copy=gpu)))
        return self._stager

    def start(self, state: dict[str, Any], folder: str | os.PathLike) -> Future:
        """Begin saving `state` into `folder`; the future completes when the write is done."""
        self.wait_for_staging()
        kwargs: dict[str, Any] = dict(storage_writer=dcp.FileSystemWriter(folder),
                                      process_group=self.process_group, no_dist=not dist_on())
        if self.mode == "async":
            kwargs["async_checkpointer_type"] = AsyncCheckpointerType.THREAD
        else:
            kwargs["async_stager"] = self._pinned_stager()
            kwargs["async_checkpointer_type"] = (
                AsyncCheckpointerType.PROCESS if dist_on() else AsyncCheckpointerType.THREAD)
        try:
            out = dcp.async_save(state, **kwargs)
        except (Exception, CheckpointException) as e:
            raise explain(e, folder, "staging the async save into") from e
        if hasattr(out, "upload_completion"):  # AsyncSaveResponse: staging runs in background
            self._staging = out.staging_completion
            return out.upload_completion
        return out

    def wait_for_staging(self) -> None:
        if self._staging is not None:
            staging, self._staging = self._staging, None
            staging.result()

    def close(self) -> None:
        self.wait_for_staging()
        if self._stager is not None:
            self._stager.inner.close()
            self._stager = None
