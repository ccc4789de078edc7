"""torchtitan's config keys that Titan spells differently, ignores, or accepts at one value only.

A torchtitan v0.1 or v0.2 TOML file (or command line) goes through `translate` before Titan's
schema sees it; every key it touches leaves one line in `notes`, printed at start-up, so nothing
is changed or dropped silently. Keys whose meaning differs (a value Titan cannot honour) are
errors naming the key, the value and what Titan does instead.
"""

from __future__ import annotations

from typing import Any

from titan_train.errors import ConfigError

# Same meaning, other name (torchtitan v0.1 names, and v0.2 keys Titan keeps elsewhere).
RENAMED: dict[str, str] = {
    "job.print_args": "job.print_config",
    "lr_scheduler.lr_min": "lr_scheduler.min_lr_factor",
    "training.compile": "compile.enable",
    "checkpoint.enable_checkpoint": "checkpoint.enable",
    "checkpoint.initial_load_model_weights_only": "checkpoint.initial_load_model_only",
    "checkpoint.last_save_model_weights_only": "checkpoint.last_save_model_only",
    "memory_estimation.enabled": "memory_estimation.enable",
    "training.dataloader.num_workers": "training.num_workers",
    "debug.seed": "training.seed",
    "debug.deterministic": "training.deterministic",
    # torchtitan's Flux job config (its training / validation extensions) -> Titan's [diffusion]
    "training.classifier_free_guidance_prob": "diffusion.classifier_free_guidance_prob",
    "training.img_size": "diffusion.img_size",
    "validation.denoising_steps": "diffusion.denoising_steps",
    "validation.save_img_count": "diffusion.save_img_count",
    "validation.save_img_folder": "diffusion.save_img_folder",
    **{f"float8.{k}": f"quantize.linear.float8.{k}" for k in (
        "enable_fsdp_float8_all_gather", "precompute_float8_dynamic_scale_for_fsdp", "recipe_name",
        "filter_fqns", "emulate")},
}

# Accepted and ignored: what the key does in torchtitan has no counterpart that matters in Titan.
_LOADER = "Titan's loader pins and prefetches the next step's batches itself; validation runs in-process"
IGNORED: dict[str, str] = {
    "job.use_for_integration_test": "a marker for torchtitan's own test suite",
    "float8.force_recompute_fp8_weight_in_bwd": "torchao: deprecated, has no effect",
    "memory_estimation.disable_fake_mode": "read only by torchtitan's separate estimation script",
    "checkpoint.enable_ft_dataloader_checkpoints": "TorchFT only",
    "training.dataloader.persistent_workers": _LOADER,
    "training.dataloader.pin_memory": _LOADER,
    "training.dataloader.prefetch_factor": _LOADER,
    "validation.dataloader.num_workers": _LOADER,
    "validation.dataloader.persistent_workers": _LOADER,
    "validation.dataloader.pin_memory": _LOADER,
    "validation.dataloader.prefetch_factor": _LOADER,
    "activation_checkpoint.preserve_rng_state": "Titan's blocks draw no random numbers (no dropout)",
    "activation_checkpoint.determinism_check": "a torch.utils.checkpoint debug check",
    "activation_checkpoint.debug": "torch.utils.checkpoint debug logging",
    "activation_checkpoint.early_stop": "Titan uses torch's default (stop recomputing early)",
    "activation_checkpoint.visualize_memory_budget_pareto": "a debugging plot of torch's partitioner, which Titan "
                                                            "does not draw (mode = 'memory_budget' itself runs)",
    "checkpoint.initial_load_in_hf_quantized": "Titan finds FP8 block-quantized HF weights (weight_scale_inv) "
                                               "in the files and dequantizes them while loading",
}
IGNORED_SECTIONS: dict[str, str] = {  # inert without a switch that Titan refuses
    "mx.": "MXFP8 (converter 'mx'), which Titan does not have",
    "quantize.linear.mx.": "MXFP8 (converter 'quantize.linear.mx'), which Titan does not have",
    "quantize.grouped_mm.": "grouped-GEMM quantization of MoE experts, which Titan does not have",
    "fault_tolerance.": "TorchFT, which Titan does not integrate (fault_tolerance.enable must stay false)",
    "inference.": "read by torchtitan's separate Flux inference script; Titan samples during validation",
}
# config modules of torchtitan's model folders whose keys Titan has natively
NATIVE_CONFIG_MODULES = {"torchtitan.models.flux.job_config": "[encoder] and [diffusion]",
                         "torchtitan.experiments.flux.job_config": "[encoder] and [diffusion]"}

# Accepted at torchtitan's default only: any other value asks for something Titan does not do.
DEFAULT_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "training.dtype": (("float32",), "full-bf16 training without fp32 master weights"),
    "comm.mode": (("default",), "fake-backend / local-tensor dry runs (use tools/estimate_memory.py)"),
    "comm.save_traces_file_prefix": (("rank_",), "a flight-recorder file prefix other than 'rank_'"),
    "parallelism.context_parallel_load_balancer": (("headtail",), "context-parallel load balancers other than "
                                                                  "head-tail"),
    "parallelism.pipeline_parallel_first_stage_less_layers": ((1,), "another weight for the embedding stage"),
    "parallelism.pipeline_parallel_last_stage_less_layers": ((1,), "another weight for the output stage"),
    "parallelism.pipeline_parallel_schedule_csv": (("", None), "schedules read from a CSV file"),
    "parallelism.enable_compiled_autograd": ((False,), "compiled autograd"),
    "parallelism.expert_tensor_parallel_degree": ((1,), "tensor parallel inside the experts (torchtitan main "
                                                        "dropped it; Titan shards experts by expert parallel and FSDP)"),
    "optimizer.early_step_in_backward": ((False,), "optimizer steps inside backward"),
    "training.gc_debug": ((False,), "a garbage collection every step"),
    "checkpoint.load_only": ((False,), "runs that load but never save (set checkpoint.interval high instead)"),
    "debug.deterministic_warn_only": ((False,), "deterministic mode that only warns"),
    "lr_scheduler.total_steps": ((None,), "a schedule longer than training.steps: set training.steps to the "
                                          "schedule's length and training.stop_at_step to where this run ends"),
    "job.custom_config_module": (("",), "user modules extending the config"),
    "job.save_config_file": ((None, ""), "writing the config to a file (use --print-config)"),
    "experimental.custom_import": (("",), "importing user modules"),
    "experimental.custom_args_module": (("",), "user modules extending the config"),
    "fault_tolerance.enable": ((False,), "TorchFT fault tolerance"),
    "validation.all_timesteps": ((False,), "stratified timesteps per validation sample (Titan draws one per "
                                           "sample, fixed by its id)"),
    "training.test_mode": ((False,), "random encoders built to the real ones' widths: use encoder.t5_encoder = "
                                     "encoder.clip_encoder = 'tiny' with model.flavor = 'flux-debug'"),
}
# torchtitan's two switches for validation guidance, one Titan key (diffusion.cfg_scale; 1 = off)
_CFG_ON, _CFG_SCALE = "validation.enable_classifier_free_guidance", "validation.classifier_free_guidance_scale"

# Dataset names torchtitan registers that mean one of Titan's in a given place.
VALIDATION_DATASETS = {"c4_validation": "c4"}  # Titan reads each dataset's validation split itself
TORCHTITAN_DATASETS = {  # no Titan counterpart under that name: what to write instead
    "c4_test": "a sample of c4 inside a torchtitan checkout: use dataset = 'local' with dataset_path = "
               "'<torchtitan>/tests/assets/c4_test', or the bundled corpus ('bundled', the default) offline",
    "c4_validation": "c4's validation split: Titan trains on c4's train split ('c4') and validates on its "
                     "validation split (validation.dataset = 'c4')",
    "cc12m-wds": "CC12M as webdataset shards on the Hugging Face Hub: use dataset = 'pixparse/cc12m-wds' "
                 "(streamed through HF datasets)",
    "cc12m-test": "a CC12M sample tar inside a torchtitan checkout: use dataset = 'webdataset' with dataset_path = "
                  "'<torchtitan>/tests/assets/cc12m_test', or Titan's offline 'synthetic_shapes'",
    "coco-validation": "COCO captions on the Hub: give its Hugging Face id (e.g. validation.dataset = "
                       "'howard-hou/COCO-Text'), or 'synthetic_shapes' offline",
}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (TOML sections to dotted keys)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *sections, key = dotted.split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
        node[key] = value
    return out


def _same(value: Any, allowed: tuple[Any, ...]) -> bool:
    if isinstance(value, str) and not any(isinstance(a, str) for a in allowed):
        low = value.strip().lower()  # a command-line string: "false", "1", "none"
        return any(low == str(a).lower() or (a is None and low in ("none", "null")) for a in allowed)
    return any(value == a and type(value) is type(a) or (value is None and a is None) for a in allowed)


def translate_key(key: str, value: Any, notes: list[str], where: str) -> str | None:
    """The Titan key for a torchtitan `key` (or `key` itself), None when it is to be ignored;
    a note for each translation, ConfigError for a value Titan cannot honour."""
    if key in RENAMED:
        notes.append(f"{where}: torchtitan's {key} read as {RENAMED[key]}")
        return RENAMED[key]
    if key in IGNORED:
        notes.append(f"{where}: {key} ignored ({IGNORED[key]})")
        return None
    if key == "job.custom_config_module" and value in NATIVE_CONFIG_MODULES:
        notes.append(f"{where}: {key} = {value!r} not needed (Titan has its keys: {NATIVE_CONFIG_MODULES[value]})")
        return None
    if key in DEFAULT_ONLY:
        allowed, what = DEFAULT_ONLY[key]
        if not _same(value, allowed):
            shown = " or ".join(repr(a) for a in allowed)
            raise ConfigError(f"{where}: {key} = {value!r} asks for {what}, which Titan does not do; only "
                              f"{shown} (torchtitan's default) is accepted")
        notes.append(f"{where}: {key} = {value!r} accepted (torchtitan's default; Titan has no such option)")
        return None
    for section, why in IGNORED_SECTIONS.items():
        if key.startswith(section):
            notes.append(f"{where}: {key} ignored ({why})")
            return None
    return key


def translate(data: dict[str, Any], notes: list[str], where: str) -> dict[str, Any]:
    """A TOML dict with torchtitan's keys turned into Titan's (see the tables above)."""
    flat: dict[str, Any] = {}
    origin: dict[str, str] = {}
    raw = flatten(data)
    if _CFG_ON in raw or _CFG_SCALE in raw:
        on, scale = raw.pop(_CFG_ON, False), raw.pop(_CFG_SCALE, 5.0)
        raw["diffusion.cfg_scale"] = float(scale) if on in (True, "true", "True", "1") else 1.0
        notes.append(f"{where}: torchtitan's {_CFG_ON} / {_CFG_SCALE} read as diffusion.cfg_scale = "
                     f"{raw['diffusion.cfg_scale']} (1 = no guidance)")
    for key, value in raw.items():
        new = translate_key(key, value, notes, where)
        if new is None:
            continue
        if new in flat and flat[new] != value:
            raise ConfigError(f"{where}: {origin[new]} = {flat[new]!r} and {key} = {value!r} set the same option "
                              f"({new}) to different values; keep one")
        flat[new], origin[new] = value, key
    _check_dataset(flat.get("training.dataset"), "training.dataset", where)
    if flat.get("validation.dataset") == "coco-validation":
        _check_dataset("coco-validation", "validation.dataset", where)
    dataset = flat.get("validation.dataset")
    if dataset in VALIDATION_DATASETS:
        flat["validation.dataset"] = VALIDATION_DATASETS[dataset]
        notes.append(f"{where}: validation.dataset = {dataset!r} read as {VALIDATION_DATASETS[dataset]!r} "
                     "(Titan reads the validation split of the dataset named)")
    return unflatten(flat)


def _check_dataset(name: Any, key: str, where: str) -> None:
    import pathlib

    if name in TORCHTITAN_DATASETS and not pathlib.Path(name).exists():
        raise ConfigError(f"{where}: {key} = {name!r} is torchtitan's name for {TORCHTITAN_DATASETS[name]}")
