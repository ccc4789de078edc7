"""titan-data: tokenizers, datasets and checkpointable, layout-independent loaders of tokens and of
image-caption pairs."""

from titan_data.build import MODES, build_dataloader, pretokenize
from titan_data.corpus import documents
from titan_data.errors import DataError
from titan_data.images import (
    IMAGE_DATASETS,
    ImageCaptionLoader,
    build_image_loader,
    encode_to_cache,
    make_synthetic_image_captions,
    write_webdataset,
)
from titan_data.loader_base import TokenLoader
from titan_data.pretokenized import PretokenizedLoader
from titan_data.registry import DATASETS, DatasetSpec, default_cache_dir, get_dataset
from titan_data.streaming import StreamingLoader
from titan_data.tokenizer import (
    BUNDLED_TOKENIZER,
    LLAMA3_PATTERN,
    LLAMA3_SPECIAL_TOKENS,
    TiktokenTokenizer,
    Tokenizer,
    load_tokenizer,
)
from titan_data.tokenizer_train import train_tokenizer
from titan_data.tokens import TokenStore, open_token_dir

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_TOKENIZER",
    "DATASETS",
    "IMAGE_DATASETS",
    "LLAMA3_PATTERN",
    "LLAMA3_SPECIAL_TOKENS",
    "MODES",
    "DataError",
    "DatasetSpec",
    "ImageCaptionLoader",
    "PretokenizedLoader",
    "StreamingLoader",
    "TiktokenTokenizer",
    "TokenLoader",
    "TokenStore",
    "Tokenizer",
    "build_dataloader",
    "build_image_loader",
    "default_cache_dir",
    "documents",
    "encode_to_cache",
    "get_dataset",
    "load_tokenizer",
    "make_synthetic_image_captions",
    "open_token_dir",
    "pretokenize",
    "train_tokenizer",
    "write_webdataset",
]
