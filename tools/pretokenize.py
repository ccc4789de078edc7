#!/usr/bin/env python
"""Tokenize a dataset once into memory-mapped token shards + index, for the pre-tokenized loader.

    python tools/pretokenize.py --dataset local --dataset-path data/train.jsonl --out tokens/train
    python tools/pretokenize.py --dataset c4 --max-documents 1000000 --tokenizer assets/hf/Llama-3.1-8B --out c4tok/train

Then train with dataset "tokens" and dataset_path tokens/ (a folder with train/ and validation/
subfolders, or one token folder).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="token folder to create (must not exist)")
    p.add_argument("--dataset", required=True, help="a titan_data text dataset (bundled, tiny, local, hub, c4)")
    p.add_argument("--dataset-path", default=None)
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--tokenizer", default=None, help="tokenizer file or folder (default: the bundled one)")
    p.add_argument("--split", default="train")
    p.add_argument("--text-field", default="text")
    p.add_argument("--text-sample-by", default="document", choices=["document", "paragraph", "line"])
    p.add_argument("--on-bad-record", default="skip", choices=["skip", "raise"])
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument("--shard-tokens", type=int, default=1 << 28, help="tokens per shard file")
    args = p.parse_args(argv)

    from titan_data import DataError, load_tokenizer, pretokenize

    start = time.perf_counter()
    try:
        store = pretokenize(args.dataset, args.out, tokenizer=load_tokenizer(args.tokenizer),
                            dataset_path=args.dataset_path, split=args.split, text_field=args.text_field,
                            dataset_config=args.dataset_config, text_sample_by=args.text_sample_by,
                            on_bad_record=args.on_bad_record, max_documents=args.max_documents,
                            shard_tokens=args.shard_tokens)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    secs = time.perf_counter() - start
    print(f"wrote {args.out}: {store.total_tokens} tokens in {len(store.offsets) - 1} shard(s), "
          f"{secs:.1f} s ({store.total_tokens / max(secs, 1e-9):,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
