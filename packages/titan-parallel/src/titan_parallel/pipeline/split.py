"""Which modules go to which pipeline stage, which stages a rank holds, and the stage modules.

A stage module is the whole model with every module outside the stage removed, so parameter
names (FQNs) stay those of the full model: checkpoints do not depend on the pipeline layout, and
a model whose init derives values from parameter names initializes each stage exactly as one
process would.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from titan_parallel.errors import ParallelConfigError, closest


def is_block(name: str) -> bool:
    """A repeated block: its last name component is an integer key ("layers.3", "model.layers.0")."""
    return name.rsplit(".", 1)[-1].isdigit()


def module_order_of(model: nn.Module, blocks: str = "layers") -> list[str]:
    """The model's top-level children in registration order, with the container `blocks`
    expanded into its entries: ["tok_embeddings", "layers.0", ..., "norm", "output"].

    Registration order must be the forward order; pass module_order explicitly otherwise.
    """
    container = model.get_submodule(blocks)
    if not isinstance(container, (nn.ModuleList, nn.ModuleDict)):
        raise ParallelConfigError(
            f"blocks={blocks!r} is a {type(container).__name__}; expected an nn.ModuleList or nn.ModuleDict"
        )
    top = blocks.split(".", 1)[0]
    order: list[str] = []
    for name, _ in model.named_children():
        if name == top:
            order += [f"{blocks}.{key}" for key, _ in container.named_children()]
        else:
            order.append(name)
    return order


def _balanced(weights: list[float], num_stages: int) -> list[int]:
    """Split a sequence into `num_stages` non-empty contiguous runs minimizing the heaviest run
    (ties: the smaller sum of squared weights, then of squared lengths). Returns run lengths.
    O(stages * n^2) with n = number of layers."""
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = (float("inf"),) * 3
    # best[k][i]: (max, sumsq, sumsq of lengths) of splitting the first i items into k runs; cut[k][i]: last run start
    best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = (0.0, 0.0, 0.0)
    for k in range(1, num_stages + 1):
        for i in range(k, n - (num_stages - k) + 1):
            for j in range(k - 1, i):
                prev = best[k - 1][j]
                if prev == inf:
                    continue
                run = prefix[i] - prefix[j]
                cand = (max(prev[0], run), prev[1] + run * run, prev[2] + (i - j) ** 2)
                if cand < best[k][i]:
                    best[k][i], cut[k][i] = cand, j
    lengths, i = [], n
    for k in range(num_stages, 0, -1):
        j = cut[k][i]
        lengths.append(i - j)
        i = j
    return lengths[::-1]


def plan_stages(module_order: Sequence[str], num_stages: int, *, input_weight: float = 1,
                output_weight: float = 1,
                split_points: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
    """Module names for each of `num_stages` stages, in stage order.

    Balanced (default): the modules before the first block (embedding) join stage 0 and count as
    `input_weight` blocks; those after the last block (norm, output) join the last stage and count
    as `output_weight` blocks; blocks are split into contiguous runs so the heaviest stage is as
    light as possible. Every stage gets at least one block.
    Explicit: `split_points` lists each stage's module names; together, in order, they must be
    exactly module_order.
    """
    order = list(module_order)
    if len(set(order)) != len(order):
        dup = sorted({m for m in order if order.count(m) > 1})
        raise ParallelConfigError(f"module_order names a module twice: {dup}")
    if split_points is not None:
        return _explicit(order, num_stages, split_points)
    block_pos = [i for i, name in enumerate(order) if is_block(name)]
    if not block_pos:
        raise ParallelConfigError(
            f"module_order {order} has no repeated blocks (names ending in an integer such as "
            "'layers.0'); pass split_points to place modules explicitly"
        )
    first, last = block_pos[0], block_pos[-1]
    if last - first + 1 != len(block_pos):
        stray = [m for m in order[first:last + 1] if not is_block(m)]
        raise ParallelConfigError(f"module_order has non-block modules {stray} between the blocks")
    if len(block_pos) < num_stages:
        raise ParallelConfigError(
            f"the model has {len(block_pos)} layer(s) but the pipeline has {num_stages} stages; "
            "every stage needs at least one layer: lower the pp degree or stages_per_rank"
        )
    for key, value in (("input_weight", input_weight), ("output_weight", output_weight)):
        if value < 0:
            raise ParallelConfigError(f"{key} must be >= 0 layer-equivalents, got {value}")
    weights = [1.0] * len(block_pos)
    weights[0] += input_weight
    weights[-1] += output_weight
    stages, start = [], first
    for length in _balanced(weights, num_stages):
        stages.append(order[start:start + length])
        start += length
    stages[0] = order[:first] + stages[0]
    stages[-1] = stages[-1] + order[last + 1:]
    return stages


def _explicit(order: list[str], num_stages: int, split_points: Sequence[Sequence[str]]) -> list[list[str]]:
    stages = [list(s) for s in split_points]
    if len(stages) != num_stages:
        raise ParallelConfigError(
            f"split_points lists {len(stages)} stage(s) but the pipeline has {num_stages} "
            "(pp degree x stages_per_rank)"
        )
    for i, stage in enumerate(stages):
        if not stage:
            raise ParallelConfigError(f"split_points[{i}] is empty; every stage needs a module")
        for name in stage:
            if name not in order:
                raise ParallelConfigError(
                    f"split_points[{i}] names unknown module {name!r}{closest(name, order)}; "
                    f"known: {', '.join(order)}"
                )
    flat = [m for s in stages for m in s]
    if flat != order:
        missing = [m for m in order if m not in flat]
        raise ParallelConfigError(
            "split_points, read in order, must list every module of module_order exactly once and in "
            f"forward order; missing: {missing or 'none'}, got order: {flat}"
        )
    return stages


def stage_ids_for_rank(rank: int, pp_degree: int, stages_per_rank: int, placement: str = "loop") -> list[int]:
    """Stage indices held by pipeline rank `rank`, in increasing order.

    loop: rank r holds r, r+P, r+2P, ...   v: rank r holds r and 2P-1-r (then 2P+r, 4P-1-r, ...).
    """
    ids = []
    for s in range(stages_per_rank):
        offset = s * pp_degree
        ids.append(offset + (pp_degree - 1 - rank if placement == "v" and s % 2 else rank))
    return sorted(ids)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), leaf


class PassThrough(nn.Module):
    """Stands in for a removed ModuleList entry (whose index must not shift): returns its input."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x


def build_stage_module(model: nn.Module, module_order: Sequence[str], keep: Sequence[str],
                       *, copy_model: bool = True) -> nn.Module:
    """A copy of `model` holding only the modules in `keep` (names from module_order).

    Removed blocks are deleted from an nn.ModuleDict (or replaced by PassThrough in an
    nn.ModuleList, keeping indices); other removed modules are set to None, so the model's
    forward must skip a None embedding / norm / output. Parameter names stay those of `model`.
    Copy a meta-device model: it costs no memory.
    """
    unknown = [k for k in keep if k not in module_order]
    if unknown:
        raise ParallelConfigError(f"modules {unknown} are not in module_order {list(module_order)}")
    stage = copy.deepcopy(model) if copy_model else model
    keep_set = set(keep)
    for name in module_order:
        if name in keep_set:
            continue
        try:
            stage.get_submodule(name)
        except AttributeError:
            raise ParallelConfigError(
                f"module_order names {name!r}, which the model does not have"
                f"{closest(name, [n for n, _ in model.named_modules() if n])}"
            ) from None
        parent, leaf = _parent(stage, name)
        if isinstance(parent, nn.ModuleDict):
            del parent[leaf]
        elif isinstance(parent, nn.ModuleList):
            parent[int(leaf)] = PassThrough()
        else:
            setattr(parent, leaf, None)
    return stage
