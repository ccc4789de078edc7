"""The DeepSeek V3 transformer: the common decoder with multi-head latent attention, dense first
blocks then mixture-of-experts blocks, and optional multi-token prediction (MTP) modules.

    tok_embeddings -> layers["0".."N-1"] (attention_norm, attention.{wq | wq_a, q_norm, wq_b},
    attention.{wkv_a, kv_norm, wkv_b, wo}, ffn_norm, feed_forward.{w1,w2,w3} or
    moe.{router.gate, experts.{w1,w2,w3}, shared_experts.{w1,w2,w3}}) -> norm -> output
    [+ mtp_layers["0".."D-1"] in training: see MTPBlock]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from titan_models import init as winit
from titan_models.common.decoder import Decoder, DecoderBlock
from titan_models.common.extra_loss import attach_loss
from titan_models.common.moe import MoE
from titan_models.deepseek_v3.args import DeepSeekV3Args


class MTPBlock(DecoderBlock):
    """One multi-token prediction module (DeepSeek V3, section 2.2): a decoder block whose input is
    eh_proj([hnorm(h); enorm(embedding of the token k places ahead)]); its output, normed by
    head_norm, goes through the model's output layer to predict the token k + 1 places ahead.
    A DecoderBlock subclass so that module patterns for blocks (`*layers.*.moe.experts`) find it."""

    def __init__(self, args: DeepSeekV3Args, moe: bool) -> None:
        super().__init__(args.mla_shape(), args.hidden_dim, args.norm_eps,
                         moe=MoE(args.dim, args.moe) if moe else None)
        self.enorm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.hnorm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.eh_proj = nn.Linear(2 * args.dim, args.dim, bias=False)
        self.head_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)

    def predict(self, h: torch.Tensor, emb: torch.Tensor, rope: torch.Tensor, mask=None) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.hnorm(h), self.enorm(emb)], dim=-1))
        return super().forward(x, rope, mask)


class DeepSeekV3Model(Decoder):
    """DeepSeek V3 / V2 decoder (built on the current default device; see common.decoder).

    With mtp_layers, a training forward also runs the MTP modules on the tokens it was given
    (module k: positions 0 .. seq-k-2, whose targets lie inside the batch) and adds
    mtp_loss_weight x mean over modules of their cross-entropy to the gradient (scaled by
    `mtp_scale`, which the trainer sets like the loss: 1 / gradient-accumulation steps); the mean
    cross-entropy (before the weight) of the forwards since the last `pop_mtp_loss()` is logged. The returned logits are the main
    model's only, so the loss, pipeline and checkpoint code need no change.
    """

    def __init__(self, args: DeepSeekV3Args) -> None:
        shape = args.mla_shape()

        def block(i: int) -> DecoderBlock:
            moe = MoE(args.dim, args.moe) if args.is_moe_layer(i) else None
            return DecoderBlock(shape, args.hidden_dim, args.norm_eps, moe=moe)

        mtp_moe = args.is_moe_layer(args.n_layers - 1)  # MTP blocks are of the last block's kind
        extra = {"mtp_layers": nn.ModuleDict({str(k): MTPBlock(args, mtp_moe) for k in range(args.mtp_layers)})
                 } if args.mtp_layers else None
        super().__init__(args, block, args.qk_rope_dim, extra)
        self.mtp_scale = 1.0
        self.mtp_loss_sum: torch.Tensor | float = 0.0
        self.mtp_loss_count = 0

    def pop_mtp_loss(self) -> torch.Tensor | None:
        """The mean MTP cross-entropy of the training forwards since the last call (None: none)."""
        if not self.mtp_loss_count:
            return None
        mean = self.mtp_loss_sum / self.mtp_loss_count
        self.mtp_loss_sum, self.mtp_loss_count = 0.0, 0
        return mean

    def forward(self, tokens: torch.Tensor, *, mask_tokens: torch.Tensor | None = None) -> torch.Tensor:
        mtp = getattr(self, "mtp_layers", None)
        if mtp is None or not self.training or self.tok_embeddings is None or self.output is None:
            return super().forward(tokens, mask_tokens=mask_tokens)
        h = self.hidden(tokens)
        logits = self.output(self.norm(h))
        loss = self._mtp_loss(h, tokens, mtp)
        self.mtp_loss_sum = self.mtp_loss_sum + loss.detach()
        self.mtp_loss_count += 1
        return attach_loss(logits, loss * (self.args.mtp_loss_weight * self.mtp_scale))

    def _mtp_loss(self, h: torch.Tensor, tokens: torch.Tensor, mtp: nn.ModuleDict) -> torch.Tensor:
        seq = tokens.shape[1]
        losses = []
        for k, module in enumerate(mtp.values(), start=1):
            n = seq - k - 1  # positions whose target (token i + k + 1) is in the batch
            if n < 1:
                raise ValueError(f"multi-token prediction with {len(mtp)} modules needs sequences longer "
                                 f"than {len(mtp) + 1} tokens, got {seq}")
            emb = self.tok_embeddings(tokens[:, k:k + n])
            mask = self._masks(tokens[:, :n], h.device)
            h = module.predict(h[:, :n], emb, self.freqs_cis, mask)
            logits = self.output(module.head_norm(h))
            target = tokens[:, k + 1:k + 1 + n]
            losses.append(F.cross_entropy(logits.flatten(0, 1).float(), target.flatten()))
        return torch.stack(losses).mean()

    def init_rule(self, name: str):
        parts = name.split(".")
        if parts[0] == "mtp_layers":
            rest = ".".join(parts[2:])
            if rest.endswith("norm.weight"):
                return winit.ones
            if rest == "eh_proj.weight":
                return winit.trunc_normal(0.02)
            # the block's projections as if it were one more layer
            return super().init_rule(f"layers.{self.args.n_layers + int(parts[1])}.{rest}")
        return super().init_rule(name)
