"""Registry, flavors (shapes and parameter counts on meta), args_for, validate, FLOPs."""

import dataclasses

import pytest
import torch
from titan_models import MODEL_SPECS, LlamaArgs, ModelConfigError, get_model_spec
from titan_models.testing import tiny_llama_args

SPEC = get_model_spec("llama3")


def test_unknown_model_lists_names_and_closest_match():
    with pytest.raises(ModelConfigError, match=r"unknown model 'lama3': known models are deepseek_v3, flux, gpt_oss, llama3, llama4, qwen3; did you mean 'llama3'"):
        get_model_spec("lama3")
    assert set(MODEL_SPECS) == {"llama3", "qwen3", "deepseek_v3", "gpt_oss", "llama4", "flux"} and SPEC.name == "llama3"


def test_unknown_flavor_and_override_name_the_closest_match():
    with pytest.raises(ModelConfigError, match=r"unknown llama3 flavor '8b'.*did you mean '8B'"):
        SPEC.args_for("8b")
    with pytest.raises(ModelConfigError, match=r"override 'vocab'.*did you mean 'vocab_size'"):
        SPEC.args_for("debugmodel", vocab=100)
    with pytest.raises(ModelConfigError, match="unknown llama3 flavor"):
        SPEC.build("huge")


def test_args_for_applies_overrides_and_validates():
    args = SPEC.args_for("debugmodel", vocab_size=300, max_seq_len=512, tie_embeddings=True,
                         attn_backend="flex", attn_mask="block_causal", eos_id=0)
    assert (args.vocab_size, args.max_seq_len, args.tie_embeddings, args.dim) == (300, 512, True, 256)
    assert SPEC.flavors["debugmodel"].vocab_size == 2048  # the registry entry is untouched
    with pytest.raises(ModelConfigError, match="eos_id"):
        SPEC.args_for("debugmodel", attn_mask="block_causal")
    with pytest.raises(ModelConfigError, match="unknown attn_backend 'flash'"):
        SPEC.args_for("debugmodel", attn_backend="flash")


# name -> (published parameter count, hidden size, tied)
PUBLISHED = {
    "1B": (1_235_814_400, 8192, True),
    "3B": (3_212_749_824, 8192, True),
    "8B": (8_030_261_248, 14336, False),
    "70B": (70_553_706_496, 28672, False),
    "405B": (405_853_388_800, 53248, False),
}


@pytest.mark.parametrize("flavor", list(PUBLISHED))
def test_flavor_shapes_and_parameter_counts_on_meta(flavor):
    count, hidden, tied = PUBLISHED[flavor]
    args = SPEC.args_for(flavor)
    with torch.device("meta"):
        model = SPEC.build(args)
    assert args.num_params(model) == args.num_params() == count
    assert args.hidden_dim == hidden and args.tie_embeddings == tied
    assert model.layers["0"].feed_forward.w1.weight.shape == (hidden, args.dim)
    assert model.layers["0"].attention.wk.weight.shape == (8 * args.head_dim, args.dim)
    assert (model.output.weight is model.tok_embeddings.weight) == tied
    assert list(model.layers) == [str(i) for i in range(args.n_layers)]
    assert args.num_params(model, exclude_embedding=True) == count - args.vocab_size * args.dim


def test_debugmodel_is_small_and_uses_gqa():
    args = SPEC.flavors["debugmodel"]
    assert (args.dim, args.n_layers, args.n_heads, args.kv_heads, args.vocab_size) == (256, 6, 16, 8, 2048)
    assert args.num_params() < 6_000_000


def test_flops_formula_against_a_hand_count():
    a = tiny_llama_args()  # dim 64, 2 layers, 4 heads (head_dim 16) over 2 kv heads, vocab 256
    hidden = 192  # 2/3 * 4 * 64 = 170 -> next multiple of 32
    block = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * hidden + 2 * 64
    non_embedding = 2 * block + 64 + 256 * 64  # blocks, final norm, output projection
    assert a.num_params() == non_embedding + 256 * 64
    attention = 12 * 2 * 4 * 16 * 100  # 2 matmuls x 2 FLOPs x 3 (fwd + bwd) per layer, head, dim, key
    assert a.num_flops_per_token(100) == 6 * non_embedding + attention
    # Tied: the output projection is still a matmul, so FLOPs do not change.
    assert dataclasses.replace(a, tie_embeddings=True).num_flops_per_token(100) == a.num_flops_per_token(100)


def test_validate_names_every_problem():
    bad = LlamaArgs(dim=64, n_layers=2, n_heads=6, n_kv_heads=4, vocab_size=10, max_seq_len=30,
                    tie_embeddings=True)
    with pytest.raises(ModelConfigError) as e:
        SPEC.validate(bad, tp=4, cp=4, pp=4)
    text = str(e.value)
    for piece in ("dim=64 is not divisible by n_heads=6", "n_heads=6 is not divisible by n_kv_heads=4",
                  "n_heads=6 is not divisible by tensor-parallel degree tp=4",
                  "max_seq_len=30 divisible by 2 x cp = 8", "tie_embeddings=True", "pp=4 stages"):
        assert piece in text
    with pytest.raises(ModelConfigError, match="n_kv_heads=2 is not divisible by tensor-parallel degree tp=4"):
        SPEC.validate(tiny_llama_args(), tp=4)
    # a caller names the degrees as its users write them; the message lists what would work
    with pytest.raises(ModelConfigError,
                       match=r"degree parallelism.tensor_parallel_degree=4 \(degrees dividing .*: 1, 2\)"):
        SPEC.validate(tiny_llama_args(), tp=4, names={"tp": "parallelism.tensor_parallel_degree"})
    for backend in ("sdpa", "flex"):  # neither path shards a document mask (ring does not patch flex)
        with pytest.raises(ModelConfigError, match="block_causal' does not combine with context parallel"):
            SPEC.validate(tiny_llama_args(attn_mask="block_causal", eos_id=1, attn_backend=backend), cp=2)
    with pytest.raises(ModelConfigError, match="tp=-1 must be >= 1"):
        SPEC.validate(tiny_llama_args(), tp=-1)
    SPEC.validate(tiny_llama_args(), tp=2, cp=2)
    SPEC.validate(tiny_llama_args(max_seq_len=34), tp=2, sequence_parallel=False)


def test_parallel_description_as_data():
    assert SPEC.blocks == "layers" and SPEC.float8_skip == ()
    assert SPEC.pipeline_split_points(tiny_llama_args(n_layers=4)) == ["layers.1", "layers.2", "layers.3"]
    with torch.device("meta"):
        model = SPEC.build(tiny_llama_args())
    plan = SPEC.tp_plan(model)
    assert "layers.*.attention.wq" in plan and "norm" in plan and "output" in plan
    assert all(isinstance(getattr(model, k), torch.nn.Module) for k in plan if "." not in k)
    model.tok_embeddings = model.norm = None  # a middle pipeline stage
    assert not {"tok_embeddings", "norm"} & set(SPEC.tp_plan(model, sequence_parallel=False))
    assert "layers.*.attention_norm" not in SPEC.tp_plan(model, sequence_parallel=False)
