"""Tokens/s of both loading modes on this machine, one process, no workers (so: per core/worker).

    python -m titan_data.bench [--seq-len 2048] [--batch 8] [--seconds 5]

pretokenized: the bundled corpus from its shipped tokens. streaming (memory): the bundled text
tokenized and packed on the fly. streaming (jsonl): the same text read from a local JSON-lines file
through Hugging Face datasets, which adds parsing.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

from titan_data.build import build_dataloader
from titan_data.corpus import documents
from titan_data.tokenizer import load_tokenizer


def tokens_per_second(loader, seconds: float) -> float:
    next(loader)  # start-up (opening files, first document) is not throughput
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, _ = next(loader)
        n += x.numel()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description="titan-data loading throughput")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    tok = load_tokenizer()
    kw = dict(tokenizer=tok, seq_len=args.seq_len, local_batch_size=args.batch)
    results = {
        "pretokenized": tokens_per_second(build_dataloader("bundled", **kw), args.seconds),
        "streaming (memory)": tokens_per_second(build_dataloader("bundled", mode="streaming", **kw), args.seconds),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "bundled.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents("bundled")))
        results["streaming (jsonl)"] = tokens_per_second(
            build_dataloader("local", dataset_path=str(path), **kw), args.seconds)
    for name, rate in results.items():
        print(f"{name:20s} {rate:>14,.0f} tokens/s   (seq_len {args.seq_len}, batch {args.batch}, 1 process)")
    return results


if __name__ == "__main__":
    main()
