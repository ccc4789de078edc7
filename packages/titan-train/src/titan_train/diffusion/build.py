"""The pieces build_run takes from the diffusion task instead of the language model's: the image
loaders, the frozen encoders, the objective, the validator and the EMA."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import titan_data
import torch

from titan_train.config import JobConfig
from titan_train.diffusion import rules
from titan_train.diffusion.conditioning import Conditioner, build_conditioner
from titan_train.diffusion.ema import EMA
from titan_train.diffusion.task import FlowMatching
from titan_train.diffusion.validation import SampleSettings, make_validator


class PairLoader:
    """An image loader's dict batches as (batch, sample_ids) pairs, the step runner's protocol;
    its state is the image loader's."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.mode = loader.mode  # "image_map" resumes under any layout (LoaderState shares it)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.loader)
        # the ids as a plain list: they stay on the CPU (the step draws noise from them there)
        return batch, batch["sample_ids"].tolist()

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def image_loader(cfg: JobConfig, layout, *, validation: bool = False):
    src = cfg.validation if validation else cfg.training
    return titan_data.build_image_loader(
        rules.dataset_of(src.dataset), resolution=cfg.diffusion.img_size, local_batch_size=src.local_batch_size,
        dp_rank=layout.dp_rank, dp_world_size=layout.dp_size, dataset_path=src.dataset_path,
        seed=cfg.training.seed or 0, infinite=not validation, split="validation" if validation else "train",
        num_workers=0 if validation else cfg.training.num_workers)


@dataclass
class DiffusionTask:
    conditioner: Conditioner
    objective: FlowMatching
    seq_len: int                      # joint tokens per sample (image patches + text)
    cfg: JobConfig
    layout: object
    ema: EMA | None = None
    notes: list[str] = field(default_factory=list)   # start-up lines: defaults the run filled in

    def loader(self) -> PairLoader:
        return PairLoader(image_loader(self.cfg, self.layout))

    def forward_loss(self, model, batch: dict, sample_ids: list[int]) -> torch.Tensor:
        return self.objective(model, batch, sample_ids)

    def tokens_of(self, sample_ids: list[int]) -> int:
        return len(sample_ids) * self.seq_len

    def attach_ema(self, parts) -> Callable[[], None] | None:
        """The EMA of `parts` when diffusion.ema_decay > 0; returns its per-step update."""
        if self.cfg.diffusion.ema_decay > 0:
            self.ema = EMA(parts, self.cfg.diffusion.ema_decay)
            return self.ema.update
        return None

    def validator(self, model, loss_mesh, train_context, metrics, step_of: Callable[[], int], rank: int):
        d, v = self.cfg.diffusion, self.cfg.validation
        samples = SampleSettings(d.save_img_count, d.denoising_steps, d.cfg_scale,
                                 Path(self.cfg.job.dump_folder).expanduser() / d.save_img_folder, rank == 0)
        return make_validator(lambda: image_loader(self.cfg, self.layout, validation=True), model, self.objective,
                              loss_mesh, train_context, batches=v.steps, samples=samples, step_of=step_of,
                              metrics=metrics, ema=self.ema)


def build_task(cfg: JobConfig, plan, layout, device: torch.device) -> DiffusionTask:
    """Encoders on `device` in the run's compute dtype, checked against the model; the training
    data opened now (a missing dataset fails before the model is built), validation's too."""
    dtype = plan.precision.param_dtype if plan.precision.compute_bytes == 2 else torch.float32
    cond = build_conditioner(rules.encoder_settings(cfg), plan.args, device=device, dtype=dtype,
                             seed=cfg.training.seed or 0)
    guidance = cfg.diffusion.guidance if getattr(plan.args, "guidance_embed", False) else None
    objective = FlowMatching(cond, rules.flow_settings(cfg), seed=cfg.training.seed or 0, guidance=guidance,
                             latent_hw=rules.latent_hw(cfg))
    task = DiffusionTask(cond, objective, rules.joint_seq_len(cfg), cfg, layout)
    for key, src in (("training.dataset", cfg.training), ("validation.dataset", cfg.validation)):
        if src.dataset == "bundled" and (key == "training.dataset" or cfg.validation.enable):
            task.notes.append(f"{key} = 'bundled' (the language models' corpus) read as '{rules.DEFAULT_DATASET}', "
                              "Titan's offline image-caption set")
    e = cfg.encoder
    if not e.autoencoder_path and cfg.model.flavor != "flux-debug":
        task.notes.append(f"encoder.autoencoder_path is unset: latents come from the random/weightless "
                          f"'{e.autoencoder_flavor}' autoencoder, not FLUX.1's (set it to BFL's ae.safetensors "
                          "for real images)")
    if cfg.validation.enable:
        image_loader(cfg, layout, validation=True)
    return task
