"""Config sections of diffusion runs (model.name = "flux"): the frozen encoders and the
rectified-flow objective. Encoder names follow torchtitan's Flux job config."""

from __future__ import annotations

from dataclasses import dataclass

from titan_train.config.fields import opt


@dataclass
class Encoder:
    t5_encoder: str = opt("tiny", "T5 text encoder: a local Hugging Face folder (config, weights, tokenizer), or "
                                  "'tiny' (a small random encoder with a byte tokenizer, for tests and the quick start), or 'none' (a "
                                  "latent cache brings the encodings)")
    clip_encoder: str = opt("tiny", "CLIP text encoder: a local Hugging Face folder, 'tiny' or 'none'")
    autoencoder_path: str | None = opt(None, "the autoencoder's weights (BFL's ae.safetensors); unset = random "
                                             "weights of autoencoder_flavor (tests, benchmarks)")
    autoencoder_flavor: str = opt("pixels", "autoencoder when no weights are given: pixels (no weights: 4x pooled "
                                            "pixels folded into 16 channels, so debug samples are pictures), "
                                            "debug (a tiny random one), flux (FLUX.1's shape, random)",
                                  choices=("pixels", "debug", "flux"))
    max_t5_encoding_len: int = opt(256, "text tokens per caption (T5 positions; the model sees them all)")


@dataclass
class Diffusion:
    img_size: int = opt(256, "training resolution in pixels (a multiple of 16: 8x autoencoder, 2x2 patches)")
    classifier_free_guidance_prob: float = opt(
        0.0, "probability of replacing each caption encoding (T5 and CLIP independently) by the empty caption's, "
             "so the model also learns the unconditional velocity (torchtitan's Flux configs: 0.447, i.e. ~20% "
             "of samples with neither)")
    timestep_sampling: str = opt("logit_normal", "how t in (0, 1) is drawn per sample (t = 1: pure noise)",
                                 choices=("uniform", "logit_normal"))
    logit_mean: float = opt(0.0, "logit_normal: mean of the normal behind sigmoid")
    logit_std: float = opt(1.0, "logit_normal: standard deviation of the normal behind sigmoid")
    time_shift: bool = opt(True, "shift t toward noise for larger images, as Flux's sampling schedule does "
                                 "(mu from the image's token count)")
    guidance: float = opt(3.5, "the guidance value fed to a guidance-distilled flavor (flux-dev); ignored otherwise")
    ema_decay: float = opt(0.0, "exponential moving average of the weights (e.g. 0.999), saved in checkpoints and "
                                "used for validation samples; 0 = off")
    denoising_steps: int = opt(30, "validation samples: Euler steps of the sampler")
    cfg_scale: float = opt(1.0, "validation samples: classifier-free guidance scale (1 = off)")
    save_img_count: int = opt(2, "validation samples: images drawn from the first validation captions (0 = none)")
    save_img_folder: str = opt("img", "validation samples: folder under job.dump_folder for the PNGs")
