"""A Hugging Face `tokenizer.json` behind titan-data's Tokenizer API (optional `tokenizers` package)."""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Sequence

from titan_data.errors import DataError
from titan_data.tokenizer import Tokenizer

# Tried in order when no tokenizer_config.json names the token.
_BOS_GUESSES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]")
_EOS_GUESSES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "[SEP]")
_PAD_GUESSES = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]")


class HFTokenizer(Tokenizer):
    """`tokenizer.json` loaded with the `tokenizers` package; BOS/EOS from tokenizer_config.json."""

    def __init__(self, path: str | pathlib.Path):
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError:
            raise DataError(
                f"loading {path} needs the optional 'tokenizers' package: pip install 'titan-data[hf]'"
            ) from None
        path = pathlib.Path(path)
        try:
            raw = path.read_bytes()
            self._tok = _HF.from_str(raw.decode())
        except OSError as e:
            raise DataError(f"cannot read tokenizer file {path}: {e.strerror or e}") from None
        except Exception as e:  # the Rust side raises a plain Exception on bad JSON
            raise DataError(f"tokenizer file {path} is not a valid Hugging Face tokenizer.json: {e}") from None
        # Special-token text in ordinary input is encoded as plain text, never as control tokens.
        self._tok.encode_special_tokens = True
        self.path = str(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.fingerprint = "hf-" + hashlib.sha256(raw).hexdigest()[:20]
        config = _read_config(path.parent / "tokenizer_config.json")
        self.bos_id = self._find(config.get("bos_token"), _BOS_GUESSES)
        self.eos_id = self._find(config.get("eos_token"), _EOS_GUESSES)
        self.pad_id = self._find(config.get("pad_token"), _PAD_GUESSES)

    def _find(self, named: object, guesses: tuple[str, ...]) -> int | None:
        if isinstance(named, dict):
            named = named.get("content")
        for text in ([named] if isinstance(named, str) else []) + list(guesses):
            tid = self._tok.token_to_id(text)
            if tid is not None:
                return tid
        return None

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _read_config(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} (expected a JSON object): {e}") from None
    return config if isinstance(config, dict) else {}
