"""Shared helpers for titan-ckpt tests: a tiny Llama-like model, an HF adapter, training steps."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, DIM, HEADS, LAYERS = 64, 16, 2, 2


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = Attention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention.wo(torch.tanh(self.attention.wq(self.attention_norm(x))))


class Tiny(nn.Module):
    """Meta-style names (tok_embeddings, layers.N.attention.wq, output); layers is a ModuleDict
    so a pipeline stage can drop blocks and keep the full model's FQNs."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({str(i): Block(DIM) for i in range(LAYERS)})
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tok_embeddings is not None:
            x = self.tok_embeddings(x)
        for block in self.layers.values():
            x = block(x)
        return self.output(x) if self.output is not None else x


def make_model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def pipeline_part(model: Tiny, stage: int) -> Tiny:
    """Stage 0: embeddings + layer 0; stage 1: layer 1 + output (FQNs unchanged)."""
    if stage == 0:
        del model.layers["1"]
        model.output = None
    else:
        del model.layers["0"]
        model.tok_embeddings = None
    return model


def make_optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (2, 9), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> float:
    device = next(model.parameters()).device
    x, y = (t.to(device) for t in batch(step))
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


class HeadPermuteAdapter:
    """HF-style names and a per-head row permutation of wq, like Llama's rotary layout change."""

    fqn_to_index_mapping = None

    def _perm(self, w: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        d1, d2 = w.shape
        half = d1 // HEADS // 2
        shape = (HEADS, half, 2, d2) if inverse else (HEADS, 2, half, d2)
        return w.reshape(shape).transpose(1, 2).reshape(d1, d2)

    def to_hf(self, sd: dict) -> dict:
        out = {}
        for k, v in sd.items():
            if k.endswith("attention.wq.weight"):
                v = self._perm(v)
            out["model." + k.replace(".attention.", ".self_attn.")] = v
        return out

    def from_hf(self, hf: dict) -> dict:
        out = {}
        for k, v in hf.items():
            k = k.removeprefix("model.").replace(".self_attn.", ".attention.")
            if k.endswith("attention.wq.weight"):
                v = self._perm(v, inverse=True)
            out[k] = v
        return out

    def hf_config(self, dtype: str) -> dict:
        return {"model_type": "tiny", "hidden_size": DIM, "torch_dtype": dtype}


def full_states(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Model and flattened optimizer state as plain CPU tensors (gathered if sharded)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    msd, osd = get_state_dict(model, opt, options=opts)
    return _plain(msd), _plain(osd)


def _plain(sd: dict) -> dict:
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in sd.items():
        if isinstance(v, DTensor):
            v = v.full_tensor()
        out[k] = v.detach().clone().cpu() if torch.is_tensor(v) else v
    return out


def assert_same(a: dict, b: dict, what: str = "") -> None:
    assert sorted(a) == sorted(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), f"{what}: {k} differs"
        else:
            assert a[k] == b[k], f"{what}: {k}: {a[k]!r} != {b[k]!r}"


class CountingLoader:
    """A stand-in for a checkpointable data loader: per-rank position under a rank-specific key."""

    def __init__(self, rank: int = 0) -> None:
        self.rank, self.position = rank, 0

    def state_dict(self) -> dict:
        return {f"rank_{self.rank}": {"position": self.position}}

    def load_state_dict(self, sd: dict) -> None:
        self.position = sd[f"rank_{self.rank}"]["position"]
