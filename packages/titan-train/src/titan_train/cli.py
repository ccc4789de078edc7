"""`titan-train` / `python -m titan_train`: parse, check, build, train; user mistakes exit cleanly."""

from __future__ import annotations

import os
import sys

from titan_train.config import (
    JobConfig,
    build_config,
    check_config,
    help_text,
    shipped_configs,
    to_toml,
)
from titan_train.errors import ConfigError


def user_error_types() -> tuple[type[BaseException], ...]:
    """Each package's error class for bad input: printed as one message, never as a traceback."""
    import titan_ckpt
    import titan_data
    import titan_mesh
    import titan_models
    import titan_parallel

    found = [ConfigError, titan_mesh.ParallelDimsError, titan_mesh.LaunchEnvError]
    for module, name in ((titan_models, "ModelConfigError"), (titan_data, "DataError"),
                         (titan_ckpt, "CheckpointError"), (titan_parallel, "ParallelConfigError")):
        err = getattr(module, name, None)
        if err is not None:
            found.append(err)
    return tuple(found)


def _seed_checkpoint(cfg: JobConfig) -> None:
    import titan_models

    from titan_train.plan import model_args
    from titan_train.trainer.checkpointing import save_seed_checkpoint
    from titan_train.trainer.setup import load_tokenizer

    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ConfigError("checkpoint.create_seed_checkpoint runs on one process: launch without torchrun")
    from titan_mesh import ParallelDims, set_determinism

    tokenizer = load_tokenizer(cfg)
    spec = titan_models.get_model_spec(cfg.model.name)
    args = model_args(cfg, spec, tokenizer.vocab_size, ParallelDims(world_size=1, dp_shard=1), tokenizer.eos_id)
    set_determinism(cfg.training.seed if cfg.training.seed is not None else 0)
    print(f"seed checkpoint written to {save_seed_checkpoint(cfg, spec, args)}")


def run_job(cfg: JobConfig) -> int:
    from titan_train.trainer.build_run import build_run
    from titan_train.trainer.checkpointing import finished, plan_resume
    from titan_train.trainer.loop import train
    from titan_train.trainer.profiling import configure_flight_recorder

    resume = plan_resume(cfg)
    done = finished(cfg, resume)
    if done is not None:  # a finished job resubmitted: nothing to build
        if os.environ.get("RANK", "0") == "0":
            print(f"titan-train: {done}", flush=True)
        return 0
    configure_flight_recorder(cfg)
    run = build_run(cfg, resume)
    try:
        step = train(run)
        run.metrics.log_text(f"done: step {step} of {cfg.training.steps}")
    finally:
        run.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(shipped_configs()))
        return 0
    print_only = "--print-config" in argv
    argv = [a for a in argv if a != "--print-config"]
    from titan_train.trainer.loop import Terminated, TrainingDiverged

    errors = user_error_types()
    import torch.distributed as dist

    owns_group = not dist.is_initialized()  # a caller's group (tests, notebooks) is left alone
    try:
        notes: list[str] = []
        cfg = build_config(argv, notes)
        if os.environ.get("RANK", "0") == "0":
            for note in notes:
                print(f"titan-train: {note}", flush=True)
        check_config(cfg)
        if print_only or cfg.job.print_config:
            print(to_toml(cfg))
            if print_only:
                return 0
        if cfg.checkpoint.create_seed_checkpoint:
            _seed_checkpoint(cfg)
            return 0
        return run_job(cfg)
    except errors as e:
        print(f"titan-train: error: {e}", file=sys.stderr, flush=True)
        return 2
    except TrainingDiverged as e:
        print(f"titan-train: {e}", file=sys.stderr, flush=True)
        return 3
    except Terminated as e:
        print(f"titan-train: {e}", file=sys.stderr, flush=True)
        return 143
    except KeyboardInterrupt:
        print("titan-train: interrupted", file=sys.stderr)
        return 130
    finally:
        if owns_group:
            from titan_mesh import destroy_distributed

            destroy_distributed()


def entry() -> None:
    sys.exit(main())
