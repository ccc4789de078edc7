"""pp2 x dp2 x cp2 x tp2 on 16 fake ranks: meshes, stage assignment, TP plan, Ulysses hooks and
FSDP sharding compose on every rank, without running the model."""

from __future__ import annotations

import pytest
import torch
from test_parallel_pp_model import ToyModel
from titan_mesh import ParallelDims
from titan_mesh.testing import fake_world
from titan_parallel import apply_fsdp, apply_tp
from titan_parallel.context import apply_ulysses, validate_cp
from titan_parallel.pipeline import module_order_of, pipeline_split, validate_pipeline
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

SEQ = 32
TP_PLAN = {
    **{f"layers.*.attention.{w}": ColwiseParallel() for w in ("wq", "wk", "wv")},
    "layers.*.attention.wo": RowwiseParallel(),
    "layers.*.feed_forward.w1": ColwiseParallel(),
    "layers.*.feed_forward.w2": RowwiseParallel(),
}


def build_rank(rank: int, schedule: str) -> dict:
    with fake_world(16, rank=rank):
        dims = ParallelDims(pp=2, dp_shard=2, cp=2, tp=2, world_size=16)
        mesh = dims.build_mesh("cpu")
        assert mesh.mesh_dim_names == ("pp", "dp_shard", "cp", "tp")
        validate_pipeline(schedule, pp_degree=2, stages_per_rank=2, num_blocks=4, local_batch_size=8,
                          microbatch_size=2)
        validate_cp(cp_degree=2, seq_len=SEQ, method="ulysses", n_heads=4, tp_degree=2)
        validate_cp(cp_degree=2, seq_len=SEQ, method="ring")
        with torch.device("meta"):
            model = ToyModel()
        parts = pipeline_split(model, dims.get_mesh("pp"), module_order=module_order_of(model),
                               schedule=schedule, stages_per_rank=2)
        placements = {}
        for module in parts.modules:
            apply_tp(module, dims.get_mesh("tp"), TP_PLAN)
            apply_ulysses(module, dims.get_mesh("cp"))
            apply_fsdp(module, dims.get_mesh("dp_shard_cp"), reshard_after_forward="never")
            for name, p in module.named_parameters():
                assert isinstance(p, DTensor), name
                placements[name] = (p.device_mesh.mesh_dim_names, tuple(p.placements), tuple(p.to_local().shape))
        return {"coords": {n: dims.get_mesh(n).get_local_rank() for n in ("pp", "dp_shard", "cp", "tp")},
                "fsdp_size": dims.get_mesh("dp_shard_cp").size(), "stage_ids": parts.stage_ids,
                "placements": placements, "first": parts.is_first, "last": parts.is_last}


@pytest.mark.parametrize(("schedule", "stages"), [("Interleaved1F1B", [[0, 2], [1, 3]]),
                                                   ("ZBVZeroBubble", [[0, 3], [1, 2]])])
def test_4d_layout_composes_on_16_ranks(schedule, stages):
    for rank in (0, 5, 10, 15):
        r = build_rank(rank, schedule)
        pp = rank // 8
        assert r["coords"] == {"pp": pp, "dp_shard": rank // 4 % 2, "cp": rank // 2 % 2, "tp": rank % 2}
        assert r["fsdp_size"] == 4 and r["stage_ids"] == stages[pp]
        assert (r["first"], r["last"]) == ((True, schedule == "ZBVZeroBubble") if pp == 0
                                           else (False, schedule == "Interleaved1F1B"))
        # a TP-sharded weight: FSDP shards dim 0 over dp_shard x cp (4), TP shards it over tp (2)
        wq = next(v for k, v in r["placements"].items() if k.endswith("attention.wq.weight"))
        # (FSDP's placement on a TP-sharded dim is a strided shard of dim 0)
        assert wq[0] == ("dp_shard_cp", "tp") and wq[1][0].dim == 0 and wq[1][1] == Shard(0)
        assert wq[2] == (2, 16)
        norm = next(v for k, v in r["placements"].items() if k.endswith("ffn_norm.weight"))
        assert norm == (("dp_shard_cp",), (Shard(0),), (4,))  # not TP-sharded: FSDP only
