"""What a diffusion run's plan needs from the config: the model's args, the joint sequence
length (image patches + text tokens, the unit of tokens/s and MFU), and the checks that fail
before any work starts, naming the key."""

from __future__ import annotations

from titan_train.config import JobConfig
from titan_train.diffusion.conditioning import EncoderSettings
from titan_train.diffusion.flow import FlowSettings
from titan_train.errors import ConfigError

# the bundled text corpus is a language model's default; a diffusion run's offline default is this
DEFAULT_DATASET = "synthetic_shapes"


def dataset_of(name: str) -> str:
    return DEFAULT_DATASET if name == "bundled" else name


def latent_hw(cfg: JobConfig) -> tuple[int, int]:
    side = cfg.diffusion.img_size // 8
    return side, side


def joint_seq_len(cfg: JobConfig) -> int:
    h, w = latent_hw(cfg)
    return (h // 2) * (w // 2) + cfg.encoder.max_t5_encoding_len


def encoder_settings(cfg: JobConfig) -> EncoderSettings:
    e = cfg.encoder
    return EncoderSettings(e.t5_encoder, e.clip_encoder, e.autoencoder_path, e.autoencoder_flavor,
                           e.max_t5_encoding_len)


def flow_settings(cfg: JobConfig) -> FlowSettings:
    d = cfg.diffusion
    return FlowSettings(d.timestep_sampling, d.logit_mean, d.logit_std, d.time_shift, d.classifier_free_guidance_prob)


def check(cfg: JobConfig, dims) -> None:
    """Diffusion options and the layouts the Flux model supports."""
    d, e = cfg.diffusion, cfg.encoder
    if d.img_size < 16 or d.img_size % 16:
        raise ConfigError(f"diffusion.img_size = {d.img_size} must be a positive multiple of 16 (the autoencoder "
                          "downsamples 8x, then the model packs 2x2 latent patches)")
    for key, value, lo, hi in (("diffusion.classifier_free_guidance_prob", d.classifier_free_guidance_prob, 0.0, 1.0),
                               ("diffusion.ema_decay", d.ema_decay, 0.0, 0.999999)):
        if not lo <= value <= hi:
            raise ConfigError(f"{key} = {value} must be within [{lo}, {hi}]")
    if d.logit_std <= 0:
        raise ConfigError(f"diffusion.logit_std = {d.logit_std} must be > 0")
    for key, value in (("diffusion.denoising_steps", d.denoising_steps),
                       ("encoder.max_t5_encoding_len", e.max_t5_encoding_len)):
        if value < 1:
            raise ConfigError(f"{key} = {value} must be >= 1")
    if d.save_img_count < 0 or d.cfg_scale < 0:
        raise ConfigError(f"diffusion.save_img_count = {d.save_img_count} and diffusion.cfg_scale = {d.cfg_scale} "
                          "must be >= 0")
    if "none" in (e.t5_encoder, e.clip_encoder):  # text encodings only from a latent cache
        asks = [k for k, on in (("training.dataset = latent_cache", dataset_of(cfg.training.dataset) != "latent_cache"),
                                ("diffusion.classifier_free_guidance_prob = 0", d.classifier_free_guidance_prob > 0),
                                ("diffusion.save_img_count = 0 (or validation.enable = false)",
                                 cfg.validation.enable and d.save_img_count > 0)) if on]
        if asks:
            raise ConfigError(f"encoder.t5_encoder / clip_encoder = 'none' (no text encoders) needs {', '.join(asks)}: "
                              "captions cannot be encoded without them")
    refused = [(k, v) for k, v in (("parallelism.pipeline_parallel_degree", dims.pp),
                                   ("parallelism.context_parallel_degree", dims.cp)) if v > 1]
    if refused:
        key, value = refused[0]
        raise ConfigError(f"{key} = {value}: {cfg.model.name} trains with FSDP / HSDP / DDP and tensor parallel "
                          "(plus activation checkpointing and compile); pipeline and context parallel are not "
                          "built for it: set it to 1")
    if cfg.memory_estimation.enable:
        raise ConfigError("memory_estimation.enable: the memory estimator models language models only; turn it "
                          f"off for {cfg.model.name}")


def model_args(cfg: JobConfig, spec, dims):
    """The flavor's args with the model options that apply to a diffusion model (n_layers, the
    SDPA kernels; the family refuses attn_backend / tie_embeddings it has not), validated under
    the degrees. model.n_layers = n keeps n blocks, split as the flavor splits double- and
    single-stream blocks (flux-dev: n = 18 keeps 6 + 12)."""
    from titan_models import RunOptions

    from titan_train.plan import DEGREE_KEYS

    m = cfg.model
    options = RunOptions(n_layers=m.n_layers if m.n_layers > 0 else None, tie_embeddings=m.tie_embeddings,
                         attn_backend=m.attn_backend, sdpa_kernels=tuple(m.sdpa_kernels))
    args = spec.with_options(spec.args_for(m.flavor), options)
    spec.validate(args, tp=dims.tp, cp=dims.cp, pp=dims.pp, names=DEGREE_KEYS)
    return args
