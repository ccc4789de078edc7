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
    """All model parts' LR schedulers advance together: one state serves every pipeline layout.

    Only the position (steps taken) comes from a checkpoint. The schedule itself (peak LR, steps,
    warm-up, decay) is the one configured now, so a run extended with a larger training.steps
    continues on its new schedule from the next step on, not on the old one's tail. `settings`
    (the schedule's settings, saved beside the position) lets the trainer say what changed.
    """

    def __init__(self, schedulers: list, settings: dict[str, Any] | None = None) -> None:
        self.schedulers = schedulers
        self.settings = dict(settings or {})
        self.loaded_settings: dict[str, Any] | None = None  # the checkpoint's, after a load

    def state_dict(self) -> dict[str, Any]:
        sd = dict(self.schedulers[0].state_dict())
        sd.pop("lr_lambdas", None)  # lambdas are rebuilt from the config
        sd["settings"] = dict(self.settings)
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.loaded_settings = sd.get("settings")  # None in checkpoints of earlier versions
        for sched in self.schedulers:
            sched.last_epoch = int(sd["last_epoch"])
            sched._step_count = int(sd.get("_step_count", sched.last_epoch + 1))
            resync_lr(sched)


def resync_lr(sched) -> None:
    """Set the optimizer's LRs to what `sched`'s schedule gives at its position. Loading an optimizer
    state restores the LRs of the schedule it was saved under; they must follow the current one."""
    factors = [fn(sched.last_epoch) for fn in sched.lr_lambdas]
    for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs, factors):
        group["initial_lr"] = base
        group["lr"] = base * factor
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


class LoaderState:
    """The data loader's position, keyed by data-parallel rank (DCP keeps one copy per key).

    A pre-tokenized (or map-style image) loader's state is the same on every rank (samples
    consumed of one global order), so it is stored once and resumes under any data-parallel degree.
    """

    def __init__(self, loader, dp_rank: int) -> None:
        self.loader, self.dp_rank = loader, dp_rank
        # pre-tokenized and map-style image loaders count samples of one global order
        self.shared = getattr(loader, "mode", None) in ("pretokenized", "image_map")

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
                              "degree: use that degree, training.dataset_mode = 'pretokenized' (from the start of "
                              "a run), or add dataloader to checkpoint.exclude_from_loading")
        self.loader.load_state_dict(sd[key])
