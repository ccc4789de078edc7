"""RoPE: Llama 3.1 frequency scaling values, the table, and relative-position invariance."""

import math

import pytest
import torch
from titan_models import RopeScaling
from titan_models.common.rope import YarnScaling, apply_rope, rope_frequencies, rope_table

SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)
YARN = YarnScaling(factor=32.0, original_max_seq_len=4096, beta_fast=32.0, beta_slow=1.0)


def _by_hand(freq, s=SCALING):
    """Meta's reference loop, one frequency at a time."""
    wavelen = 2 * math.pi / freq
    if wavelen < s.original_max_seq_len / s.high_freq_factor:  # < 2048: unchanged
        return freq
    if wavelen > s.original_max_seq_len / s.low_freq_factor:  # > 8192: divided by factor
        return freq / s.factor
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    return (1 - smooth) * freq / s.factor + smooth * freq


def test_llama31_scaling_matches_the_reference_loop_and_its_three_bands():
    plain = rope_frequencies(128, 500000.0, None)
    scaled = rope_frequencies(128, 500000.0, SCALING)
    want = torch.tensor([_by_hand(f) for f in plain.tolist()], dtype=torch.float64)
    torch.testing.assert_close(scaled, want, rtol=1e-12, atol=0)
    assert scaled[0] == plain[0] == 1.0  # highest frequency untouched
    torch.testing.assert_close(scaled[-1], plain[-1] / 8)  # lowest divided by factor
    wavelen = 2 * math.pi / plain
    middle = (wavelen > 2048) & (wavelen < 8192)
    assert middle.any() and ((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8)).all()


def test_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=256, num_attention_heads=2, rope_theta=500000.0,
                         max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    torch.testing.assert_close(rope_frequencies(128, 500000.0, SCALING).float(), inv_freq, rtol=1e-6, atol=0)


def test_table_layout_and_relative_positions():
    table = rope_table(16, 50, 10000.0, None)
    assert table.shape == (50, 8, 2) and table.dtype == torch.float32
    torch.testing.assert_close(table[0], torch.stack((torch.ones(8), torch.zeros(8)), -1))
    # q.k after rotation depends only on the distance between positions.
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def dot(i, j):
        return (apply_rope(q, table[i:i + 1]) * apply_rope(k, table[j:j + 1])).sum()
    torch.testing.assert_close(dot(3, 1), dot(40, 38), rtol=1e-5, atol=1e-5)
    assert apply_rope(q.bfloat16(), table[:1]).dtype == torch.bfloat16


@pytest.mark.parametrize("layout, scaling", [("pairs", SCALING), ("halves", None), ("halves", YARN)])
def test_rope_backward_is_the_inverse_rotation(layout, scaling):
    from titan_models.common.rope import _rotate as _rotate_any

    def _rotate(x, cos, sin):
        return _rotate_any(x, cos, sin, layout)

    table = rope_table(16, 12, 10000.0, scaling)
    cos, sin = table[..., 0].unsqueeze(1), table[..., 1].unsqueeze(1)
    x = torch.randn(2, 12, 3, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, table, layout), (x,))
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(2, 12, 3, 16).to(dtype).requires_grad_()
        b = a.detach().clone().requires_grad_()
        g = torch.randn(2, 12, 3, 16).to(dtype)
        apply_rope(a, table, layout).backward(g)
        _rotate(b, cos, sin).backward(g)  # plain autograd through the same forward
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0 if dtype == torch.float32 else 1e-2)


def test_complex_and_real_rotations_agree():
    from titan_models.common.rope import _pairs_complex as _rotate_complex
    from titan_models.common.rope import _pairs_real as _rotate_real

    table = rope_table(16, 12, 500000.0, SCALING)
    cos, sin = table[..., 0].unsqueeze(1), table[..., 1].unsqueeze(1)
    x = torch.randn(2, 12, 3, 16)
    torch.testing.assert_close(_rotate_complex(x, cos, sin), _rotate_real(x, cos, sin), rtol=1e-6, atol=1e-6)
    xb = x.bfloat16()
    assert _rotate_complex(xb, cos, sin).dtype == torch.bfloat16
    torch.testing.assert_close(_rotate_complex(xb, cos, sin), _rotate_real(xb, cos, sin), rtol=0, atol=1e-2)


@pytest.mark.parametrize("scaling", [
    YarnScaling(factor=32.0, original_max_seq_len=4096),                                   # GPT-OSS style
    YarnScaling(factor=40.0, original_max_seq_len=4096, mscale=1.0, mscale_all_dim=1.0),   # DeepSeek V3
    YarnScaling(factor=4.0, original_max_seq_len=2048, beta_fast=16, beta_slow=2, truncate=False),
])
def test_yarn_matches_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "yarn", "factor": scaling.factor, "beta_fast": scaling.beta_fast, "beta_slow": scaling.beta_slow,
            "original_max_position_embeddings": scaling.original_max_seq_len, "truncate": scaling.truncate,
            "rope_theta": 150000.0}
    if scaling.mscale:
        rope.update(mscale=scaling.mscale, mscale_all_dim=scaling.mscale_all_dim)
    config = LlamaConfig(hidden_size=1024, num_attention_heads=16, head_dim=64, rope_theta=150000.0,
                         max_position_embeddings=scaling.original_max_seq_len * int(scaling.factor),
                         rope_scaling=rope)
    inv_freq, factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    torch.testing.assert_close(rope_frequencies(64, 150000.0, scaling).float(), inv_freq, rtol=1e-6, atol=0)
    assert scaling.magnitude() == pytest.approx(factor)
    table = rope_table(64, 8, 150000.0, scaling)
    assert table[0, :, 0].tolist() == pytest.approx([factor] * 32)  # cos and sin carry the factor


def test_rotate_half_layout_matches_transformers():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    table = rope_table(16, 10, 10000.0, None)
    q = torch.randn(2, 10, 3, 16)  # [batch, seq, heads, head_dim]
    emb = torch.cat([table[..., 0], table[..., 0]], -1), torch.cat([table[..., 1], table[..., 1]], -1)
    want, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), emb[0][None], emb[1][None])
    torch.testing.assert_close(apply_rope(q, table, "halves"), want.transpose(1, 2), rtol=1e-6, atol=1e-6)
