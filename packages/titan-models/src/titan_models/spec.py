"""ModelSpec: everything a trainer and the parallel appliers need to know about a model family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from titan_models.errors import unknown_name


@dataclass(frozen=True)
class ModelSpec:
    """A model family: its flavors, how to build it, and how it wants to be parallelized, as data.

    build(args_or_flavor) -> nn.Module on the current default device (wrap in
        `with torch.device("meta")` for large models, then to_empty + init_weights()).
    tp_plan(model, *, sequence_parallel=True, loss_parallel=True) -> {FQN pattern: ParallelStyle}.
    validate(args, *, tp=1, cp=1, pp=1, sequence_parallel=True): raises ModelConfigError.
    state_dict_adapter(args) -> object with to_hf(sd), from_hf(hf_sd), hf_config(dtype).
    args_from_hf_config(config_dict, **overrides) -> args.
    pipeline_split_points(args) -> block FQNs at which a new pipeline stage may start.
    blocks: attribute holding the repeated blocks (units of FSDP, activation checkpointing and
        compile); float8_skip: name substrings of linears that must stay in high precision
        whatever the user's float8 settings (e.g. a MoE router); the output layer is the user's choice.
    """

    name: str
    flavors: dict[str, Any]
    build: Callable[..., nn.Module]
    tp_plan: Callable[..., dict]
    validate: Callable[..., None]
    state_dict_adapter: Callable[[Any], Any]
    args_from_hf_config: Callable[..., Any]
    pipeline_split_points: Callable[[Any], list[str]]
    override: Callable[..., Any]  # (args, overrides: dict, where=str) -> args
    blocks: str = "layers"
    float8_skip: tuple[str, ...] = ()

    def args_for(self, flavor: str, **overrides: Any) -> Any:
        """The flavor's args with fields replaced, validated (unknown flavor or field: error)."""
        if flavor not in self.flavors:
            raise unknown_name(f"{self.name} flavor", flavor, self.flavors)
        args = self.override(self.flavors[flavor], overrides, where=f"{self.name} {flavor}")
        self.validate(args)
        return args
