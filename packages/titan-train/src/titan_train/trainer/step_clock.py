"""Step times as the device saw them: a mark after a logged step's work is queued, and the seconds
between two marks once both have run.

Why device events and not the host clock: the host waits for the device only where it reads a
step's numbers, one step late (loop.train). A host-clock window around a step whose numbers were
read at once (step 1, a save, a validation) ends before the next step has run, and so measures
queueing time alone (step 2 reported hundreds of percent MFU), and the window after it absorbs
the rest. A CUDA event completes when the device reaches it: the time between two marks is the
device's, whatever the host did in between, and taking it costs no synchronization of its own.
"""

from __future__ import annotations

import time

import torch


class StepClock:
    """mark() -> a handle; seconds(a, b) -> the time between two marks (b after a)."""

    def __init__(self, device: torch.device) -> None:
        self.events = device.type == "cuda"  # elsewhere the host clock (the CPU runs in order)

    def mark(self):
        if not self.events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        if not self.events:
            return end - start
        end.synchronize()  # at once where the step's numbers were read: the device got past it
        return start.elapsed_time(end) / 1000.0
