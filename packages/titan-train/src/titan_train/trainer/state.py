"""Small Stateful objects the checkpoint holds beside model and optimizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed_s}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.step = int(sd["step"])
        self.tokens_seen = int(sd["tokens_seen"])
        self.elapsed_s = float(sd.get("elapsed_s", 0.0))


class SchedulersState:
    """All model parts' LR schedulers advance together: one state serves every pipeline layout."""

    def __init__(self, schedulers: list) -> None:
        self.schedulers = schedulers

    def state_dict(self) -> dict[str, Any]:
        sd = dict(self.schedulers[0].state_dict())
        sd.pop("lr_lambdas", None)  # lambdas are rebuilt from the config
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for sched in self.schedulers:
            merged = dict(sched.state_dict())
            merged.update({k: v for k, v in sd.items() if k != "lr_lambdas"})
            sched.load_state_dict(merged)


class LoaderState:
    """The data loader's position, keyed by data-parallel rank (DCP keeps one copy per key).

    A pre-tokenized loader's state is the same on every rank (samples consumed of one global
    order), so it is stored once and resumes under any data-parallel degree.
    """

    def __init__(self, loader, dp_rank: int) -> None:
        self.loader, self.dp_rank = loader, dp_rank
        self.shared = getattr(loader, "mode", None) == "pretokenized"

    def _key(self) -> str:
        return "all_ranks" if self.shared else f"dp_rank_{self.dp_rank}"

    def state_dict(self) -> dict[str, Any]:
        return {self._key(): self.loader.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        key = self._key()
        if key not in sd:
            from titan_train.errors import ConfigError

            raise ConfigError(f"the checkpoint's data loader state has no entry {key!r} (it has "
                              f"{sorted(sd)}); a streaming dataset resumes only with the same data-parallel "
                              "degree, or add dataloader to checkpoint.exclude_from_loading")
        self.loader.load_state_dict(sd[key])
