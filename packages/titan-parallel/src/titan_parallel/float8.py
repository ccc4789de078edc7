"""Float8 training of linear layers through torchao (the optional `float8` extra).

Why torchao: its Float8Linear is PyTorch's maintained float8 training recipe. It composes with
FSDP2 (float8 all-gather of weights), DTensor TP and torch.compile, which fuses the casts and
scales into neighbouring kernels; re-implementing those scaled-matmul kernels and their
distributed integration here would only fork them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from titan_parallel.errors import ParallelConfigError, closest, one_of

RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
AUTO_FILTER = "auto_filter_small_kn"
# Minimum compute capability: float8 tensor cores (Ada/Hopper); rowwise scaled_mm needs Hopper.
MIN_CAPABILITY = {"tensorwise": (8, 9), "rowwise": (9, 0), "rowwise_with_gw_hp": (9, 0)}


def _torchao_float8():
    try:
        import torchao.float8 as float8
    except ImportError as e:
        raise ParallelConfigError(
            "float8 training needs torchao, which is not installed: pip install 'titan-parallel[float8]'"
            f" ({e})"
        ) from None
    return float8


def is_small_gemm(linear: nn.Linear, recipe: str) -> bool:
    """True when a Linear of this shape is unlikely to gain from float8 (the cast overhead
    outweighs the faster matmul; thresholds from torchao's H100 measurements), or cannot run
    in float8 at all (a dim not a multiple of 16)."""
    n, k = linear.out_features, linear.in_features
    if n % 16 or k % 16:
        return True
    if recipe == "tensorwise":
        return k <= 4096 and n <= 1024
    return n <= 2048 or k <= 1024 or (n <= 4096 and k <= 2048)


def _check_device(recipe: str, emulate: bool) -> None:
    if emulate:
        return
    need = MIN_CAPABILITY[recipe]
    if not torch.cuda.is_available():
        raise ParallelConfigError(
            f"float8 (recipe {recipe!r}) needs a CUDA GPU with compute capability >= {need[0]}.{need[1]}; "
            "none is visible. Use emulate=True to test the conversion on CPU"
        )
    have = torch.cuda.get_device_capability()
    if have < need:
        raise ParallelConfigError(
            f"float8 recipe {recipe!r} needs compute capability >= {need[0]}.{need[1]} (e.g. H100), but "
            f"{torch.cuda.get_device_name()} has {have[0]}.{have[1]}; turn float8 off on this GPU"
        )


def check_float8(
    model: nn.Module,
    *,
    recipe: str = "tensorwise",
    skip: Sequence[str] = (),
    fsdp_float8_all_gather: bool = False,
    precompute_scale: bool = False,
    emulate: bool = False,
) -> list[str]:
    """Everything apply_float8 checks before converting (torchao installed, recipe, device, skip
    entries); returns the skip name patterns."""
    if recipe not in RECIPES:
        raise one_of("recipe", recipe, RECIPES)
    if isinstance(skip, str):
        skip = [skip]
    if (fsdp_float8_all_gather or precompute_scale) and recipe != "tensorwise":
        raise ParallelConfigError(
            f"fsdp_float8_all_gather/precompute_scale need recipe='tensorwise', got recipe={recipe!r}"
        )
    if precompute_scale and not fsdp_float8_all_gather:
        raise ParallelConfigError("precompute_scale=True needs fsdp_float8_all_gather=True")
    _torchao_float8()
    _check_device(recipe, emulate)
    patterns = [s for s in skip if s != AUTO_FILTER]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for pattern in patterns:
        if not any(pattern in n for n in linears):
            raise ParallelConfigError(
                f"skip: {pattern!r} is in no nn.Linear's name{closest(pattern, linears)}; entries are "
                "name substrings such as 'output' or 'attention.wk'"
            )
    return patterns


def apply_float8(
    model: nn.Module,
    *,
    recipe: str = "tensorwise",
    skip: Sequence[str] = (),
    skip_small: bool = True,
    fsdp_float8_all_gather: bool = False,
    precompute_scale: bool = False,
    emulate: bool = False,
) -> nn.Module:
    """Swap the model's nn.Linear layers for torchao's Float8Linear (dynamic scaling).

    recipe: "tensorwise" (fastest), "rowwise", "rowwise_with_gw_hp" (most accurate). skip: name
    substrings of linears to keep in high precision ("attention.wk" skips every layer's wk,
    "output" the output layer); the entry "auto_filter_small_kn" means skip_small=True. Each entry
    must match some linear. skip_small: also skip linears too small to gain, and any whose dims
    are not multiples of 16. fsdp_float8_all_gather (tensorwise only): FSDP all-gathers the
    weights in float8; precompute_scale (needs it): call precompute_float8_scales(model) after
    each optimizer step so one all-reduce computes every weight's scale. emulate: run the float8
    math without float8 hardware (CPU tests only). Apply first, before TP and FSDP.
    """
    patterns = check_float8(model, recipe=recipe, skip=skip, emulate=emulate,
                            fsdp_float8_all_gather=fsdp_float8_all_gather,
                            precompute_scale=precompute_scale)
    skip_small = skip_small or AUTO_FILTER in skip
    float8 = _torchao_float8()

    def keep_in_float8(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear) or any(p in fqn for p in patterns):
            return False
        return not (skip_small and is_small_gemm(module, recipe))

    config = float8.Float8LinearConfig.from_recipe_name(recipe)
    config = dataclasses.replace(config, emulate=emulate,
                                 enable_fsdp_float8_all_gather=fsdp_float8_all_gather)
    float8.convert_to_float8_training(model, config=config, module_filter_fn=keep_in_float8)
    return model


def float8_linear_names(model: nn.Module) -> list[str]:
    """Names of the model's modules converted to float8."""
    return [n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"]


def precompute_float8_scales(model: nn.Module) -> None:
    """After the optimizer step, with fsdp_float8_all_gather and precompute_scale: compute the
    float8 scales of all sharded weights in one all-reduce (instead of one per weight)."""
    _torchao_float8().precompute_float8_dynamic_scale_for_fsdp(model)
