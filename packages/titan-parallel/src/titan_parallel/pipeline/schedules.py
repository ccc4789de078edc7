"""Pipeline schedules by name, and the checks that reject impossible combinations early.

Each entry of SCHEDULES says how many stages a rank holds for that schedule and how stages are
placed on ranks; validate_pipeline() checks a request against it (and against the rules the torch
classes would otherwise enforce only after the model is built) and says what would work.
"""

from __future__ import annotations

from dataclasses import dataclass

from titan_parallel.errors import ParallelConfigError, closest


@dataclass(frozen=True)
class ScheduleSpec:
    """How a schedule wants its stages.

    torch_class: attribute of torch.distributed.pipelining holding the class.
    multi_stage: the class takes a list of stages (even when a rank holds one).
    placement: "loop" (rank r holds stages r, r+P, r+2P, ...) or "v" (rank r holds r and 2P-1-r).
    min_stages_per_rank / max_stages_per_rank: allowed stages per rank (None: no upper bound).
    """

    torch_class: str
    multi_stage: bool
    placement: str
    min_stages_per_rank: int
    max_stages_per_rank: int | None
    needs_mb_ge_stages: bool  # the schedule needs at least as many microbatches as stages
    rounds_rule: bool  # n_microbatches must be a multiple of max(1, n_microbatches // pp)
    note: str


SCHEDULES: dict[str, ScheduleSpec] = {
    "GPipe": ScheduleSpec("ScheduleGPipe", False, "loop", 1, 1, False, False,
                          "all forwards, then all backwards; one stage per rank"),
    "1F1B": ScheduleSpec("Schedule1F1B", False, "loop", 1, 1, True, False,
                         "one forward one backward; one stage per rank"),
    "Interleaved1F1B": ScheduleSpec("ScheduleInterleaved1F1B", True, "loop", 2, None, False, True,
                                    "1F1B over several looped stages per rank"),
    "LoopedBFS": ScheduleSpec("ScheduleLoopedBFS", True, "loop", 2, None, False, False,
                              "breadth-first over several looped stages per rank"),
    "InterleavedZeroBubble": ScheduleSpec("ScheduleInterleavedZeroBubble", True, "loop", 1, None,
                                          False, True,
                                          "zero bubble (ZB1P): input and weight gradients split"),
    "ZBVZeroBubble": ScheduleSpec("ScheduleZBVZeroBubble", True, "v", 2, 2, True, False,
                                  "zero bubble over two V-placed stages per rank"),
    "DualPipeV": ScheduleSpec("ScheduleDualPipeV", True, "v", 2, 2, True, False,
                              "DeepSeek's DualPipe, V variant; two V-placed stages per rank"),
}


def resolve_schedule(name: str) -> tuple[str, ScheduleSpec]:
    """(canonical name, spec) for a schedule name, case-insensitively; unknown -> error."""
    by_lower = {k.lower(): k for k in SCHEDULES}
    key = by_lower.get(str(name).lower())
    if key is None:
        raise ParallelConfigError(
            f"unknown pipeline schedule {name!r}{closest(str(name), SCHEDULES)}; "
            f"known: {', '.join(SCHEDULES)}"
        )
    return key, SCHEDULES[key]


def schedule_class(name: str) -> type:
    """The torch class implementing a schedule (imported lazily: pipelining is optional at import)."""
    import torch.distributed.pipelining as pipelining

    _, spec = resolve_schedule(name)
    return getattr(pipelining, spec.torch_class)


def resolve_microbatches(*, local_batch_size: int | None = None, microbatch_size: int | None = None,
                         n_microbatches: int | None = None) -> int:
    """The number of microbatches from either n_microbatches or local_batch_size/microbatch_size."""
    if n_microbatches is not None:
        if not isinstance(n_microbatches, int) or n_microbatches < 1:
            raise ParallelConfigError(f"n_microbatches must be a positive integer, got {n_microbatches!r}")
        if local_batch_size is not None and local_batch_size % n_microbatches:
            raise ParallelConfigError(
                f"local_batch_size={local_batch_size} cannot be split into n_microbatches={n_microbatches} "
                "equal microbatches (equal sizes keep the averaged loss equal to the unpipelined one)"
            )
        if microbatch_size is not None and local_batch_size is not None \
                and local_batch_size != microbatch_size * n_microbatches:
            raise ParallelConfigError(
                f"local_batch_size={local_batch_size} != microbatch_size={microbatch_size} x "
                f"n_microbatches={n_microbatches}; give either n_microbatches or microbatch_size"
            )
        return n_microbatches
    if local_batch_size is None or microbatch_size is None:
        raise ParallelConfigError(
            "give n_microbatches, or both local_batch_size and microbatch_size "
            f"(got local_batch_size={local_batch_size}, microbatch_size={microbatch_size})"
        )
    for key, value in (("local_batch_size", local_batch_size), ("microbatch_size", microbatch_size)):
        if not isinstance(value, int) or value < 1:
            raise ParallelConfigError(f"{key} must be a positive integer, got {value!r}")
    if local_batch_size % microbatch_size:
        raise ParallelConfigError(
            f"local_batch_size={local_batch_size} is not divisible by the pipeline microbatch_size="
            f"{microbatch_size}; use a microbatch size that divides it (e.g. "
            f"{', '.join(str(d) for d in range(1, local_batch_size + 1) if local_batch_size % d == 0)})"
        )
    return local_batch_size // microbatch_size


def validate_pipeline(schedule: str, *, pp_degree: int, stages_per_rank: int = 1,
                      num_blocks: int | None = None, n_microbatches: int | None = None,
                      local_batch_size: int | None = None, microbatch_size: int | None = None) -> int:
    """Check a pipeline request before any model is built; return the number of microbatches
    (or 0 when no batch information was given).

    Raises ParallelConfigError for: an unknown schedule, a stage count the schedule cannot use
    (e.g. ZBVZeroBubble with one stage per rank), fewer repeated blocks than stages, a local batch
    not divisible by the microbatch size, or a microbatch count the schedule cannot run.
    """
    name, spec = resolve_schedule(schedule)
    if not isinstance(pp_degree, int) or pp_degree < 1:
        raise ParallelConfigError(f"pp degree must be a positive integer, got {pp_degree!r}")
    if not isinstance(stages_per_rank, int) or stages_per_rank < 1:
        raise ParallelConfigError(f"stages_per_rank must be a positive integer, got {stages_per_rank!r}")
    hi = spec.max_stages_per_rank
    if stages_per_rank < spec.min_stages_per_rank or (hi is not None and stages_per_rank > hi):
        allowed = (f"exactly {hi}" if hi == spec.min_stages_per_rank
                   else f"at least {spec.min_stages_per_rank}" if hi is None
                   else f"{spec.min_stages_per_rank}..{hi}")
        hint = ("; use 1F1B or GPipe for one stage per rank" if stages_per_rank == 1
                else "; use Interleaved1F1B, LoopedBFS or InterleavedZeroBubble for several stages per rank")
        raise ParallelConfigError(
            f"pipeline schedule {name} ({spec.note}) needs {allowed} stage(s) per rank, got "
            f"stages_per_rank={stages_per_rank}{hint}"
        )
    num_stages = pp_degree * stages_per_rank
    if num_blocks is not None and num_blocks < num_stages:
        raise ParallelConfigError(
            f"the model has {num_blocks} repeated block(s) (layers), fewer than the {num_stages} "
            f"pipeline stages (pp={pp_degree} x stages_per_rank={stages_per_rank}); every stage needs "
            "at least one layer: lower the pp degree or stages_per_rank"
        )
    if n_microbatches is None and (local_batch_size is None or microbatch_size is None):
        return 0
    n_mb = resolve_microbatches(local_batch_size=local_batch_size, microbatch_size=microbatch_size,
                                n_microbatches=n_microbatches)
    if spec.needs_mb_ge_stages and n_mb < num_stages:
        raise ParallelConfigError(
            f"pipeline schedule {name} needs at least as many microbatches as stages: got "
            f"{n_mb} microbatch(es) for {num_stages} stages; raise local_batch_size or lower "
            "microbatch_size"
        )
    if spec.rounds_rule:
        rounds = max(1, n_mb // pp_degree)
        if n_mb % rounds:
            raise ParallelConfigError(
                f"pipeline schedule {name} runs microbatches in rounds of the pp degree: "
                f"{n_mb} microbatches is not a multiple of {rounds} rounds (pp={pp_degree}); "
                f"use a multiple of {pp_degree} microbatches"
            )
    return n_mb
