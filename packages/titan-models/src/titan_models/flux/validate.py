"""Checks of FluxArgs against parallel degrees, before any memory is allocated."""

from __future__ import annotations

from collections.abc import Mapping

from titan_models.common.attention import SDPA_KERNELS
from titan_models.common.validate import namer, positive, raise_if
from titan_models.errors import unknown_name
from titan_models.flux.args import FluxArgs

SIZES = ("in_channels", "vec_in_dim", "context_in_dim", "hidden_size", "num_heads", "theta")  # must be >= 1


def validate(args: FluxArgs, *, tp: int = 1, cp: int = 1, pp: int = 1, sequence_parallel: bool = True,
             names: Mapping[str, str] | None = None) -> None:
    """Raise ModelConfigError listing every problem of `args` under these degrees. sequence_parallel
    is accepted and ignored: Flux's TP plan has no sequence parallel (its norms are weightless
    LayerNorms over a residual that every rank holds whole)."""
    n = namer(names)
    for kernel in args.sdpa_kernels:
        if kernel not in SDPA_KERNELS:
            raise unknown_name("SDPA kernel", kernel, SDPA_KERNELS)
    sizes = {k: getattr(args, k) for k in SIZES}
    if args.out_channels is not None:
        sizes["out_channels"] = args.out_channels
    raise_if(positive(sizes, {"tp": tp, "cp": cp, "pp": pp}, n))
    problems = []
    if args.depth < 0 or args.depth_single_blocks < 0 or args.n_blocks < 1:
        problems.append(f"depth={args.depth} and depth_single_blocks={args.depth_single_blocks} must be >= 0 "
                        "with at least one block")
    if args.hidden_size % args.num_heads:
        problems.append(f"hidden_size={args.hidden_size} is not divisible by num_heads={args.num_heads}")
    elif sum(args.axes_dim) != args.head_dim:
        problems.append(f"axes_dim={tuple(args.axes_dim)} sums to {sum(args.axes_dim)}; it must equal the head "
                        f"width hidden_size / num_heads = {args.head_dim}")
    if any(d <= 0 or d % 2 for d in args.axes_dim):
        problems.append(f"axes_dim={tuple(args.axes_dim)}: each RoPE axis needs a positive, even width")
    if args.mlp_hidden < 1:
        problems.append(f"mlp_ratio={args.mlp_ratio} gives an MLP of width {args.mlp_hidden}: must be >= 1")
    if tp > 1:
        allowed = ", ".join(str(d) for d in range(1, args.num_heads + 1) if args.num_heads % d == 0)
        if args.num_heads % tp:
            problems.append(f"num_heads={args.num_heads} is not divisible by tensor-parallel degree "
                            f"{n('tp')}={tp} (degrees dividing num_heads: {allowed})")
        if args.mlp_hidden % tp:
            problems.append(f"the MLP width hidden_size x mlp_ratio = {args.mlp_hidden} is not divisible by "
                            f"tensor-parallel degree {n('tp')}={tp}")
    if cp > 1:
        problems.append(f"context parallel ({n('cp')}={cp}) is not offered for Flux: set {n('cp')}=1")
    if pp > 1:
        problems.append(f"pipeline parallel ({n('pp')}={pp}) is not offered for Flux (its blocks take two "
                        f"streams and a conditioning vector, not one hidden state): set {n('pp')}=1 and use "
                        "FSDP / tensor parallel")
    raise_if(problems)
