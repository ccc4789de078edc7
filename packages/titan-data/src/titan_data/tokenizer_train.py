"""Train a byte-level BPE and write it in tiktoken format (the format `load_tokenizer` reads).

Text is split with Llama 3's pattern, pieces are counted, and the most frequent adjacent pair is
merged until the vocabulary is full. A heap of pair counts with lazy invalidation keeps each merge
proportional to the words it touches, so a few MB of text trains in seconds.
"""

from __future__ import annotations

import heapq
import pathlib
from collections import Counter, defaultdict
from collections.abc import Iterable

import regex

from titan_data.errors import DataError
from titan_data.tokenizer import (
    LLAMA3_PATTERN,
    NUM_SPECIAL_TOKENS,
    TiktokenTokenizer,
    write_tiktoken_ranks,
)


def count_pieces(texts: Iterable[str], pattern: str = LLAMA3_PATTERN) -> Counter[bytes]:
    """How often each pre-tokenized piece (as UTF-8 bytes) occurs in `texts`."""
    split = regex.compile(pattern).findall
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split(text))
    return Counter({piece.encode(): n for piece, n in counts.items()})


def train_bpe(piece_counts: Counter[bytes], num_ranks: int) -> dict[bytes, int]:
    """Mergeable ranks: the 256 bytes (rank = byte value), then merges in the order they were made.

    Stops early when no pair occurs twice; ties go to the pair with the smaller bytes.
    """
    if num_ranks < 256:
        raise DataError(f"a byte-level BPE needs at least 256 ranks, asked for {num_ranks}")
    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    ids: dict[bytes, int] = {t: i for i, t in enumerate(vocab)}
    words = [list(w) for w in piece_counts]
    freqs = list(piece_counts.values())
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_count[pair] += freqs[wi]
            where[pair].add(wi)
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    while len(vocab) < num_ranks and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        if pair_count.get((a, b), 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        if -neg < 2:
            break
        merged = vocab[a] + vocab[b]
        new = ids.get(merged)
        if new is None:  # the same bytes can arise from two different splits: keep one rank
            new = ids[merged] = len(vocab)
            vocab.append(merged)
        touched: set[tuple[int, int]] = set()
        for wi in list(where[(a, b)]):
            old, f = words[wi], freqs[wi]
            out, i = [], 0
            while i < len(old):
                if i + 1 < len(old) and old[i] == a and old[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(old[i])
                    i += 1
            for pair in zip(old, old[1:]):
                pair_count[pair] -= f
                where[pair].discard(wi)
                touched.add(pair)
            for pair in zip(out, out[1:]):
                pair_count[pair] += f
                where[pair].add(wi)
                touched.add(pair)
            words[wi] = out
        for pair in touched:
            c = pair_count[pair]
            if c <= 0:
                pair_count.pop(pair, None)
                where.pop(pair, None)
            else:
                heapq.heappush(heap, (-c, vocab[pair[0]], vocab[pair[1]], pair[0], pair[1]))
    return {tok: rank for rank, tok in enumerate(vocab)}


def train_tokenizer(
    texts: Iterable[str], out_path: str | pathlib.Path, *, vocab_size: int = 2048
) -> TiktokenTokenizer:
    """Train a BPE on `texts`, write it to `out_path` in tiktoken format and return it loaded.

    `vocab_size` counts every id, the 256 special tokens included (2048 -> 1792 BPE ranks). If the
    text runs out of pairs that occur twice, the vocabulary comes out smaller: check `.vocab_size`.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + NUM_SPECIAL_TOKENS:
        raise DataError(
            f"vocab_size must be an integer >= {256 + NUM_SPECIAL_TOKENS} (256 bytes + "
            f"{NUM_SPECIAL_TOKENS} special tokens), got {vocab_size!r}"
        )
    counts = count_pieces(texts)
    if not counts:
        raise DataError("cannot train a tokenizer on no text: every input text was empty")
    ranks = train_bpe(counts, vocab_size - NUM_SPECIAL_TOKENS)
    out_path = pathlib.Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_tiktoken_ranks(ranks, out_path)
    except OSError as e:
        raise DataError(f"cannot write tokenizer file {out_path}: {e.strerror or e}") from None
    return TiktokenTokenizer(ranks, path=str(out_path))
