"""Rebuild the bundled corpus, the bundled tokenizer and the shipped tokens (run once; outputs are committed).

Source: the King James Version of the Bible (1611; public domain) as printed by the Debian
`bible-kjv` program:  apt-get install bible-kjv && bible "Gen1:1-Rev22:21" > kjv.txt
Then:  python scripts/make_bundled_corpus.py kjv.txt
"""

import hashlib
import json
import lzma
import re
import sys

import numpy as np
from titan_data import corpus
from titan_data.tokenizer import BUNDLED_TOKENIZER
from titan_data.tokenizer_train import train_tokenizer


def chapters(raw: str) -> list[str]:
    """One document per chapter: its title, a blank line, then one numbered verse per line."""
    docs: list[tuple[str, list[list[str]]]] = []
    for line in raw.split("\n"):
        if line and not line.startswith(" ") and re.fullmatch(r"\S.* \d+", line):
            docs.append((line, []))
        elif m := re.match(r"^\s+(\d+) (.*)$", line):
            docs[-1][1].append([m.group(1), m.group(2)])
        elif line.strip():
            docs[-1][1][-1][1] += " " + line.strip()  # wrapped continuation of the last verse
    return [title + "\n\n" + "\n".join(f"{n} {t}" for n, t in verses) + "\n" for title, verses in docs]


def main(src: str) -> None:
    docs = chapters(open(src, encoding="utf-8").read())
    assert len(docs) == 1189, len(docs)
    text = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    corpus.BUNDLED_TEXT.write_bytes(lzma.compress(text.encode(), preset=9 | lzma.PRESET_EXTREME))
    corpus._all_documents.cache_clear()
    tok = train_tokenizer(corpus.documents("bundled", "train"), BUNDLED_TOKENIZER, vocab_size=2048)
    meta = {"tokenizer_fingerprint": tok.fingerprint, "corpus_sha256": corpus.corpus_sha256("bundled"),
            "dtype": "uint16", "splits": {}}
    for split in corpus.SPLITS:
        ids = tok.encode_batch(corpus.documents("bundled", split), bos=True, eos=True)
        arr = np.concatenate([np.asarray(x, dtype=np.uint16) for x in ids])
        name = f"kjv.{split}.tokens.xz"
        (corpus.ASSETS / name).write_bytes(lzma.compress(arr.tobytes(), preset=9 | lzma.PRESET_EXTREME))
        meta["splits"][split] = {"file": name, "tokens": int(arr.size), "documents": len(ids),
                                 "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
        print(f"{split}: {len(ids)} documents, {arr.size} tokens")
    corpus.BUNDLED_TOKENS_META.write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
