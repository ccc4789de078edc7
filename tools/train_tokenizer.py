#!/usr/bin/env python
"""Train a byte-level BPE tokenizer (tiktoken format, Llama 3 split pattern + 256 special tokens).

    python tools/train_tokenizer.py --out my.tiktoken --vocab-size 8192 --dataset local --dataset-path data/
    python tools/train_tokenizer.py --out kjv.tiktoken --dataset bundled      # how the bundled one was made

Load the result with `titan_data.load_tokenizer("my.tiktoken")`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="tokenizer file to write")
    p.add_argument("--vocab-size", type=int, default=2048, help="all ids, the 256 special tokens included")
    p.add_argument("--dataset", default="bundled", help="a titan_data dataset name (bundled, tiny, local, hub, c4)")
    p.add_argument("--dataset-path", default=None, help="files/folder for local, dataset name for hub")
    p.add_argument("--dataset-config", default=None, help="hub dataset config")
    p.add_argument("--split", default="train")
    p.add_argument("--text-field", default="text")
    p.add_argument("--max-documents", type=int, default=None, help="train on at most this many documents")
    args = p.parse_args(argv)

    from titan_data import DataError, train_tokenizer
    from titan_data.registry import DataRequest, get_dataset, source_texts

    try:
        spec = get_dataset(args.dataset)
        if spec.docs is None:
            raise DataError(f"dataset {args.dataset!r} holds tokens, not text: train on a text dataset")
        req = DataRequest(tokenizer=None, split=args.split, path=args.dataset_path, config=args.dataset_config,
                          text_field=args.text_field)
        source = spec.docs(req)
        source.check(args.text_field)
        texts = itertools.islice(source_texts(source, req), args.max_documents)
        start = time.perf_counter()
        tok = train_tokenizer(texts, args.out, vocab_size=args.vocab_size)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {tok.num_ranks} BPE ranks + 256 special tokens = {tok.vocab_size} ids "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
