"""Flux (rectified flow) through the CLI on the CPU:
- `--config flux_debug` trains with the loss falling, logs images/s and MFU, validates and writes
  sample PNGs;
- FSDP 2, TP 2 and FSDP 2 x TP 2 train the same global batches to the same loss and grad norm as
  one process, step by step (SGD and AdamW, guidance dropout and EMA on): each sample's noise,
  timestep and caption dropout come from its global id, so the layout cannot change them;
- validating every 2 steps under FSDP 2 (EMA weights swapped in for the samples) leaves training
  exactly as it was;
- a run stopped at step 2 resumes (on another layout) with the uninterrupted run's losses, and its
  EMA was saved;
- bad diffusion options stop before any work, naming the key."""

import json
from pathlib import Path

import pytest
from titan_mesh.testing import DistributedPool
from train_e2e_helpers import compare_records, train

FLUX = ["--config", "flux_debug", "--training.steps", "4", "--validation.enable", "false",
        "--diffusion.classifier_free_guidance_prob", "0.3", "--diffusion.ema_decay", "0.9",
        "--training.local_batch_size", "2", "--training.global_batch_size", "4"]
SGD = ["--optimizer.name", "SGD", "--optimizer.lr", "0.2"]
# validating (EMA weights swapped in for samples, then out) must leave training untouched
VALIDATING = ["--validation.enable", "true", "--validation.freq", "2", "--validation.steps", "1",
              "--validation.local_batch_size", "2", "--diffusion.save_img_count", "1",
              "--diffusion.denoising_steps", "2"]
LAYOUTS = {2: {"fsdp2": [], "tp2": ["--parallelism.tensor_parallel_degree", "2"]},
           4: {"fsdp2_tp2": ["--parallelism.tensor_parallel_degree", "2"]}}
CASES = [(w, n) for w, layouts in LAYOUTS.items() for n in layouts]


def _run(out: str, extra: list[str]) -> list[dict]:
    return train(out, *FLUX, *extra)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    with DistributedPool(world_size=1) as pool:
        return (pool.run(_run, str(tmp_path_factory.mktemp("sgd")), SGD)[0],
                pool.run(_run, str(tmp_path_factory.mktemp("adam")), [])[0])


@pytest.mark.slow
@pytest.mark.parametrize("world, layout", CASES, ids=[f"{n}" for _, n in CASES])
def test_flux_layouts_match_one_process(world, layout, references, tmp_path):
    ref_sgd, ref_adam = references
    extra = LAYOUTS[world][layout]
    with DistributedPool(world_size=world) as pool:
        compare_records(ref_sgd, pool.run(_run, str(tmp_path / "sgd"), [*extra, *SGD])[0], f"flux {layout} (SGD)")
        compare_records(ref_adam, pool.run(_run, str(tmp_path / "adam"), extra)[0], f"flux {layout} (AdamW)")


def test_validation_with_ema_leaves_training_untouched(tmp_path):
    # a slow EMA (0.5) and big SGD steps: the averaged weights differ clearly from the trained ones,
    # so a forward that still saw them after validation would change the next steps' losses
    extra = [*SGD, "--diffusion.ema_decay", "0.5", "--lr_scheduler.warmup_steps", "0"]
    with DistributedPool(world_size=2) as pool:
        plain = pool.run(_run, str(tmp_path / "plain"), extra)[0]
        validating = pool.run(_run, str(tmp_path / "val"), [*extra, *VALIDATING])[0]
    assert [r["step"] for r in validating] == [r["step"] for r in plain]
    assert "validation_loss" in validating[1]
    for a, b in zip(plain, validating):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["grad_norm"] == pytest.approx(a["grad_norm"],
                                                                                                   rel=1e-6), a["step"]


def test_flux_debug_trains_validates_and_samples(tmp_path):
    out = tmp_path / "run"
    records = train(str(out), "--config", "flux_debug", "--training.steps", "30", "--metrics.log_freq", "1",
                    "--validation.freq", "30", "--diffusion.save_img_count", "2", "--diffusion.denoising_steps", "4",
                    "--metrics.enable_tensorboard", "true")
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    last = records[-1]
    assert last["images_per_second"] > 0 and last["tflops"] > 0 and "validation_loss" in last
    pngs = sorted((out / "img" / "step-30").glob("*.png"))
    assert len(pngs) == 2 and (out / "img" / "step-30" / "0.txt").read_text().strip()
    from PIL import Image

    assert Image.open(pngs[0]).size == (64, 64)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "validation/samples" in events.Tags()["images"]


def test_torchtitan_flux_keys_are_read(tmp_path):
    from titan_train.config.parse import build_config

    path = tmp_path / "tt_flux.toml"
    path.write_text("""[job]
custom_config_module = "torchtitan.models.flux.job_config"
[model]
name = "flux"
flavor = "flux-debug"
[training]
img_size = 128
classifier_free_guidance_prob = 0.447
[validation]
enable_classifier_free_guidance = true
classifier_free_guidance_scale = 5.0
denoising_steps = 4
save_img_count = 3
all_timesteps = false
[inference]
prompts_path = "prompts.txt"
""")
    cfg = build_config(["--config", str(path)])
    d = cfg.diffusion
    assert (d.img_size, d.classifier_free_guidance_prob, d.cfg_scale, d.denoising_steps, d.save_img_count) == (
        128, 0.447, 5.0, 4, 3)
    path.write_text(path.read_text().replace("enable_classifier_free_guidance = true",
                                             "enable_classifier_free_guidance = false"))
    assert build_config(["--config", str(path)]).diffusion.cfg_scale == 1.0  # torchtitan's switch off: no guidance


def test_flux_resume_matches_the_uninterrupted_run(tmp_path):
    ckpt = ["--checkpoint.enable", "--checkpoint.interval", "2", "--checkpoint.last_save_model_only", "false"]
    with DistributedPool(world_size=2) as pool:
        full = pool.run(_run, str(tmp_path / "full"), ckpt)[0]
        first = pool.run(_run, str(tmp_path / "split"), [*ckpt, "--training.stop_at_step", "2"])[0]
        second = pool.run(_run, str(tmp_path / "split"), [*ckpt, "--parallelism.tensor_parallel_degree", "2"])[0]
    second = second[len(first):]
    assert [r["step"] for r in second] == [3, 4]
    for a, b in zip(full[2:], second):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["grad_norm"] == pytest.approx(a["grad_norm"],
                                                                                                   rel=1e-3)
    meta = json.dumps(sorted(_checkpoint_keys(tmp_path / "split" / "checkpoint" / "step-2")))
    assert '"ema.shadow.0.' in meta


def test_flux_checkpoint_of_one_process_resumes_on_two_ranks(tmp_path):
    # the image loader's state is one position in the global stream: a larger dp degree continues it
    ckpt = ["--checkpoint.enable", "--checkpoint.interval", "2", "--checkpoint.last_save_model_only", "false"]
    with DistributedPool(world_size=1) as pool:
        full = pool.run(_run, str(tmp_path / "full"), ckpt)[0]
        first = pool.run(_run, str(tmp_path / "split"), [*ckpt, "--training.stop_at_step", "2"])[0]
    with DistributedPool(world_size=2) as pool:
        second = pool.run(_run, str(tmp_path / "split"), ckpt)[0][len(first):]
    assert [r["step"] for r in second] == [3, 4]
    for a, b in zip(full[2:], second):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["step"]


def _checkpoint_keys(folder: Path) -> list[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return list(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)


@pytest.mark.parametrize("extra, needle", [
    (["--diffusion.img_size", "40"], "diffusion.img_size = 40"),
    (["--diffusion.classifier_free_guidance_prob", "1.5"], "diffusion.classifier_free_guidance_prob = 1.5"),
    (["--encoder.t5_encoder", "/nonexistent/t5"], "encoder.t5_encoder = '/nonexistent/t5'"),
    (["--encoder.autoencoder_path", "/nonexistent/ae.safetensors"], "encoder.autoencoder_path"),
    (["--model.flavor", "flux-dbg"], "flux-debug"),
], ids=["img_size", "cfg_prob", "t5_path", "ae_path", "flavor"])
def test_flux_bad_options_are_named(extra, needle, tmp_path, capsys):
    from titan_train.cli import main

    code = main(["--config", "flux_debug", "--training.steps", "1", "--job.dump_folder", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code != 0 and needle in err, err
    assert "Traceback" not in err
