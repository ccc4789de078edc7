"""JobConfig: every section of a Titan run, defaults = the embedded debug job."""

from __future__ import annotations

from dataclasses import dataclass

from titan_train.config.fields import sub
from titan_train.config.schema_diffusion import Diffusion, Encoder
from titan_train.config.schema_run import Job, LRScheduler, Model, Optimizer, Training, Validation
from titan_train.config.schema_system import (
    ActivationCheckpoint,
    Checkpoint,
    Comm,
    Compile,
    MemoryEstimation,
    Metrics,
    MoE,
    Parallelism,
    Profiling,
    Quantize,
)


@dataclass
class JobConfig:
    job: Job = sub(Job, "the run: output folder and description")
    model: Model = sub(Model, "model family, size and tokenizer")
    optimizer: Optimizer = sub(Optimizer, "optimizer")
    lr_scheduler: LRScheduler = sub(LRScheduler, "learning-rate schedule")
    training: Training = sub(Training, "data, batch, steps, precision")
    parallelism: Parallelism = sub(Parallelism, "parallel degrees and pipeline schedule")
    moe: MoE = sub(MoE, "mixture of experts: load balancing")
    activation_checkpoint: ActivationCheckpoint = sub(ActivationCheckpoint, "activation checkpointing")
    compile: Compile = sub(Compile, "torch.compile")
    quantize: Quantize = sub(Quantize, "quantized training")
    checkpoint: Checkpoint = sub(Checkpoint, "checkpointing and resume")
    metrics: Metrics = sub(Metrics, "console, TensorBoard, W&B and metrics.jsonl")
    profiling: Profiling = sub(Profiling, "profiler traces and memory snapshots")
    comm: Comm = sub(Comm, "collective timeouts and flight recorder")
    validation: Validation = sub(Validation, "periodic validation")
    memory_estimation: MemoryEstimation = sub(MemoryEstimation, "memory estimate before training")
    encoder: Encoder = sub(Encoder, "diffusion (flux): frozen text encoders and autoencoder")
    diffusion: Diffusion = sub(Diffusion, "diffusion (flux): rectified-flow training and validation samples")

    @property
    def float8(self):
        return self.quantize.linear.float8
