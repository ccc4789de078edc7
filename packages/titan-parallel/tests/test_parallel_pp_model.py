"""A tiny Llama-shaped model for the pipeline / context-parallel tests, and its own checks.

Same API shape as Titan's Llama: tok_embeddings / layers (ModuleDict) / norm / output, any of
which a pipeline stage may remove (None or deleted); each layer's attention calls a parameter-free
`sdpa` core on [B, H, S, D] tensors; a RoPE table `rope` as a buffer (sliced to the local sequence
length, so context parallel can shard it); init_weights() seeds every parameter from its name.
Other test modules import ToyModel, CFG and reference_run from here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from titan_parallel.pipeline import PassThrough, build_stage_module, module_order_of, plan_stages
from torch import nn


@dataclass(frozen=True)
class ToyConfig:
    vocab: int = 64
    dim: int = 16
    n_heads: int = 4
    n_layers: int = 4
    max_seq: int = 32


CFG = ToyConfig()


def _rope(max_seq: int, head_dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    ang = torch.outer(torch.arange(max_seq, device=device).float(), inv)
    return torch.cat([ang.cos(), ang.sin()], dim=-1)  # [max_seq, head_dim]


def _apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    cos, sin = rope.to(x.dtype).chunk(2, dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSDPA(nn.Module):
    """The attention core: causal attention over [B, H, S, D] (what Ulysses / ring CP replace)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class Attention(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.head_dim = cfg.dim // cfg.n_heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(cfg.dim, cfg.dim, bias=False) for _ in range(4))
        self.sdpa = CausalSDPA()

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # -1 heads: under tensor parallel each rank holds a slice of the heads
        q, k, v = (w(x).view(b, s, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = _apply_rope(q, rope[:s]), _apply_rope(k, rope[:s])
        out = self.sdpa(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, 2 * cfg.dim, bias=False)
        self.w2 = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.dim)
        self.attention = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope)
        return x + self.feed_forward(self.ffn_norm(x))


class ToyModel(nn.Module):
    def __init__(self, cfg: ToyConfig = CFG) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings: nn.Module | None = nn.Embedding(cfg.vocab, cfg.dim)
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layers)})
        self.norm: nn.Module | None = nn.RMSNorm(cfg.dim)
        self.output: nn.Module | None = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        self.register_buffer("rope", _rope(cfg.max_seq, cfg.dim // cfg.n_heads), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for layer in self.layers.values():
            h = layer(h, self.rope)
        h = self.norm(h) if self.norm is not None else h
        return self.output(h) if self.output is not None else h

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Each parameter from a generator seeded by (seed, its name): any subset of the model,
        sharded or not, gets the values one process would give it."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        for name, p in self.named_parameters():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            if "norm" in name:
                full = torch.ones(p.shape)
            else:
                full = torch.randn(p.shape, generator=gen) * (0.5 if "tok_embeddings" in name else 0.2)
            if isinstance(p, DTensor):
                local = distribute_tensor(full.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                p.to_local().copy_(local.to_local())
            else:
                p.copy_(full)
        self.rope = _rope(self.cfg.max_seq, self.cfg.dim // self.cfg.n_heads, device=self.rope.device)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1))


def batch(n: int = 8, seq: int = 8, seed: int = 1, cfg: ToyConfig = CFG) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab, (n, seq + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def reference_run(tokens: torch.Tensor, labels: torch.Tensor, *, steps: int = 2, lr: float = 0.5,
                  cfg: ToyConfig = CFG) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process, whole batch, SGD: the losses of each step and the first step's gradients."""
    model = ToyModel(cfg)
    model.init_weights()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, grads = [], {}
    for step in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(tokens), labels)
        loss.backward()
        if step == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        losses.append(loss.item())
        opt.step()
    return losses, grads


# ---- checks of the toy model itself and of stage construction on it ----

def test_stage_modules_keep_full_model_names_and_init():
    model = ToyModel()
    model.init_weights()
    order = module_order_of(model)
    assert order == ["tok_embeddings", "layers.0", "layers.1", "layers.2", "layers.3", "norm", "output"]
    plan = plan_stages(order, 2)
    full = dict(model.named_parameters())
    stages = []
    for keep in plan:
        with torch.device("meta"):
            meta = ToyModel()
        stage = build_stage_module(meta, order, keep)
        stage.to_empty(device="cpu")
        stage.init_weights()
        stages.append(stage)
    names = [set(dict(s.named_parameters())) for s in stages]
    assert not names[0] & names[1] and names[0] | names[1] == set(full)
    assert stages[0].norm is None and stages[0].output is None and stages[1].tok_embeddings is None
    assert list(stages[1].layers.keys()) == ["2", "3"]
    for s in stages:
        for n, p in s.named_parameters():
            assert torch.equal(p, full[n]), n
    tokens, _ = batch(2)
    assert torch.allclose(stages[1](stages[0](tokens)), model(tokens), atol=1e-6)


def test_module_list_blocks_keep_their_indices():
    model = nn.Sequential()
    model.add_module("embed", nn.Linear(4, 4))
    model.add_module("blocks", nn.ModuleList([nn.Linear(4, 4) for _ in range(3)]))
    order = module_order_of(model, blocks="blocks")
    assert order == ["embed", "blocks.0", "blocks.1", "blocks.2"]
    stage = build_stage_module(model, order, ["blocks.1", "blocks.2"])
    assert stage.embed is None and isinstance(stage.blocks[0], PassThrough)
    assert sorted(n for n, _ in stage.named_parameters()) == [
        "blocks.1.bias", "blocks.1.weight", "blocks.2.bias", "blocks.2.weight"]
