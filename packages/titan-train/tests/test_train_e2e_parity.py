"""The same global batch gives the same loss and grad norm at every step in every layout, for every
model family (Llama 3, Qwen 3).

One process (4 micro-batches per step) is the reference; FSDP 2, DDP 2, TP 2 and PP 2 run on two
ranks, HSDP 2x2, FSDP x TP 2x2 and PP 2 x CP 2 (Ulysses) on four. fp32 on CPU; relative gap < 1e-3 (observed ~1e-6).
"""

import pytest
from titan_mesh.testing import DistributedPool
from train_e2e_helpers import compare_records, train

STEPS = ["--training.steps", "4"]
LAYOUTS_2 = {
    "fsdp2": [],
    "ddp2": ["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "1"],
    "tp2": ["--parallelism.tensor_parallel_degree", "2"],
    "pp2": ["--parallelism.pipeline_parallel_degree", "2", "--parallelism.pipeline_parallel_schedule", "1F1B"],
}
LAYOUTS_4 = {
    "hsdp2x2": ["--parallelism.data_parallel_replicate_degree", "2"],
    "fsdp2_tp2": ["--parallelism.tensor_parallel_degree", "2"],
    # the pipeline schedule runs inside the context-parallel context: each stage sees half the sequence
    "pp2_cp2_ulysses": ["--parallelism.pipeline_parallel_degree", "2", "--parallelism.context_parallel_degree", "2",
                        "--parallelism.context_parallel_method", "ulysses"],
}


def _run(out: str, extra: list[str]) -> list[dict]:
    if "--parallelism.context_parallel_degree" not in extra:
        return train(out, *STEPS, *extra)
    from titan_parallel.context import ulysses

    seen, real = [], ulysses.seq_to_heads

    def recording(x, cp, group, **kw):  # attention's q, k, v on entry: [batch, heads, seq / cp, head_dim]
        seen.append(x.shape[2])
        return real(x, cp, group, **kw)

    ulysses.seq_to_heads = recording
    try:
        records = train(out, *STEPS, *extra)
    finally:
        ulysses.seq_to_heads = real
    assert seen and set(seen) == {16}, f"attention saw sequence lengths {sorted(set(seen))}, not 32 / cp = 16"
    return records


# Every family goes through the same layouts. Qwen 3's debug model unties its embeddings here so
# that pipeline parallel (which refuses tied weights across stages) runs the same model.
FAMILIES = {"llama3": [],
            "qwen3": ["--model.name", "qwen3", "--model.flavor", "debugmodel", "--model.tie_embeddings", "false"]}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family):
    model = FAMILIES[family]
    with DistributedPool(world_size=1) as pool:
        return pool.run(_run, str(tmp_path_factory.mktemp("one")), [*model, "--optimizer.name", "SGD",
                                                                    "--optimizer.lr", "0.5"])[0], \
            pool.run(_run, str(tmp_path_factory.mktemp("one_adam")), model)[0]


_compare = compare_records


@pytest.mark.slow
@pytest.mark.parametrize("world, layouts", [(2, LAYOUTS_2), (4, LAYOUTS_4)], ids=["2ranks", "4ranks"])
def test_layouts_match_one_process(world, layouts, family, reference, tmp_path):
    ref_sgd, ref_adam = reference
    model = FAMILIES[family]
    with DistributedPool(world_size=world) as pool:
        for name, extra in layouts.items():
            sgd = pool.run(_run, str(tmp_path / f"{name}_sgd"), [*model, *extra, "--optimizer.name", "SGD",
                                                                 "--optimizer.lr", "0.5"])[0]
            _compare(ref_sgd, sgd, f"{family} {name} (SGD)")
            adam = pool.run(_run, str(tmp_path / name), [*model, *extra])[0]
            _compare(ref_adam, adam, f"{family} {name} (AdamW)")
