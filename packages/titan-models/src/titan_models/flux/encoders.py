"""Frozen text encoders for Flux: T5 hidden states (the token stream) and CLIP's pooled vector.

Through Hugging Face transformers, an optional dependency (`pip install titan-models[flux]`),
imported only when encoders are built. Each encoder is a local model folder (config.json, weights
and tokenizer files, loaded with local files only) or "tiny": a small random model with a
byte-level ToyTokenizer (no files, no network), seeded so every rank builds the same weights;
the tiny widths (T5 64, CLIP 32) match the flux-debug flavor.

As BFL: T5 sees captions padded to max_t5_len without an attention mask (padding states are
part of the conditioning), CLIP at most 77 tokens, its pooled (end-of-text) output.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from titan_models.errors import ModelConfigError

CLIP_LEN = 77
TINY_SEED = 1234
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.json", "tokenizer_config.json")


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ModelConfigError("Flux text encoders need Hugging Face transformers: "
                               "pip install titan-models[flux]") from e
    return transformers


class ToyTokenizer:
    """Deterministic byte-level tokenizer for the tiny encoders: id = UTF-8 byte + 2, pad 0, end 1.
    Called like an HF tokenizer (max_length, padding="max_length", truncation) -> {"input_ids"}."""

    pad_token_id, eos_token_id, vocab_size = 0, 1, 258

    def __call__(self, texts: list[str], *, max_length: int, **_: object) -> dict[str, torch.Tensor]:
        ids = torch.full((len(texts), max_length), self.pad_token_id, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [b + 2 for b in text.encode("utf-8")][: max_length - 1] + [self.eos_token_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return {"input_ids": ids}


class TextEncoders(nn.Module):
    """A T5 encoder and a CLIP text model, frozen, with their tokenizers (plain attributes)."""

    def __init__(self, t5: nn.Module, clip: nn.Module, t5_tokenizer, clip_tokenizer, max_t5_len: int = 256) -> None:
        super().__init__()
        self.t5, self.clip = t5.eval().requires_grad_(False), clip.eval().requires_grad_(False)
        self.t5_tokenizer, self.clip_tokenizer, self.max_t5_len = t5_tokenizer, clip_tokenizer, max_t5_len
        self.train(False)

    @property
    def t5_dim(self) -> int:
        return self.t5.config.d_model

    @property
    def clip_dim(self) -> int:
        return self.clip.config.hidden_size

    def train(self, mode: bool = True) -> TextEncoders:
        return super().train(False)  # frozen: always in eval mode (no dropout)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions -> (T5 states [B, max_t5_len, d_t5], CLIP pooled [B, d_clip])."""
        captions = list(captions)
        t5_ids = self._ids(self.t5_tokenizer, captions, self.max_t5_len, self.t5)
        clip_len = min(CLIP_LEN, self.clip.config.max_position_embeddings)
        clip_ids = self._ids(self.clip_tokenizer, captions, clip_len, self.clip)
        states = self.t5(input_ids=t5_ids).last_hidden_state
        pooled = self.clip(input_ids=clip_ids).pooler_output
        return states, pooled

    @staticmethod
    def _ids(tokenizer, captions: list[str], length: int, model: nn.Module) -> torch.Tensor:
        out = tokenizer(captions, max_length=length, padding="max_length", truncation=True, return_tensors="pt")
        return out["input_ids"].to(next(model.parameters()).device)


def _tiny_t5():
    tf = _transformers()
    config = tf.T5Config(vocab_size=ToyTokenizer.vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                         feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                         decoder_start_token_id=0)
    return tf.T5EncoderModel(config), ToyTokenizer()


def _tiny_clip():
    tf = _transformers()
    config = tf.CLIPTextConfig(vocab_size=ToyTokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=CLIP_LEN,
                               pad_token_id=0, bos_token_id=0, eos_token_id=1)  # eos != 2: HF pools the first eos
    return tf.CLIPTextModel(config), ToyTokenizer()


def _check_folder(path: str, what: str) -> None:
    folder = Path(path)
    if not folder.is_dir():
        raise ModelConfigError(f"{what} encoder {path!r}: not a folder (a local HF model folder, or 'tiny')")
    files = {p.name for p in folder.iterdir()}
    lacks = [name for name, need in (("config.json", ("config.json",)), ("weights", WEIGHT_FILES),
                                     ("tokenizer files", TOKENIZER_FILES)) if not files & set(need)]
    if lacks:
        raise ModelConfigError(f"{what} encoder folder {path!r} lacks {', '.join(lacks)} (it has "
                               f"{', '.join(sorted(files)[:8]) or 'nothing'}): a model folder as "
                               "save_pretrained writes it, with its tokenizer")


def _load(path: str, what: str, model_class: str):
    _check_folder(path, what)
    tf = _transformers()
    try:
        model = getattr(tf, model_class).from_pretrained(path, local_files_only=True)
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, ImportError) as e:
        raise ModelConfigError(f"{what} encoder folder {path!r} cannot be loaded as {model_class}: {e}") from e
    return model, tokenizer


def build_text_encoders(t5: str, clip: str, *, max_t5_len: int = 256, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> TextEncoders:
    """TextEncoders from two sources, each a local HF model folder or "tiny" (see the module doc).
    The tiny models are drawn from a fixed seed without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        t5_model, t5_tok = _tiny_t5() if t5 == "tiny" else _load(os.fspath(t5), "T5", "T5EncoderModel")
        torch.manual_seed(TINY_SEED + 1)
        clip_model, clip_tok = _tiny_clip() if clip == "tiny" else _load(os.fspath(clip), "CLIP", "CLIPTextModel")
    encoders = TextEncoders(t5_model, clip_model, t5_tok, clip_tok, max_t5_len)
    return encoders.to(device=device, dtype=dtype)
