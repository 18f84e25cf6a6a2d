"""Tokenizer bench: BPE training MB/s, encoding MB/s (batched + Rust-parallel `encode_batch` against
one-document-at-a-time `encode`, the loop people write first) and bytes per token, on the pydocs corpus.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.common import measure_pair, row, save
from conf.collect import PydocsSource
from conf.tokenizer import TokenizerConfig
from tasks.collect import SourceStats, pydocs_documents
from tasks.tokenizer import train_bpe


def main() -> Path:
    texts = [d.text for d in pydocs_documents(PydocsSource(), SourceStats())]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    cfg = TokenizerConfig(vocab_size=4096)

    train_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        tok = train_bpe(iter(texts), cfg, length=len(texts))
        train_times.append(time.perf_counter() - t0)
    train_mb_s = mb / sorted(train_times)[1]

    os.environ["TOKENIZERS_PARALLELISM"] = "true"

    def batched():
        return [e.ids for i in range(0, len(texts), 1000) for e in tok.encode_batch(texts[i : i + 1000])]

    def one_by_one():
        return [tok.encode(t).ids for t in texts]

    a, b, (ids_a, ids_b) = measure_pair(
        batched, one_by_one, mb, "MB", runs=3, names=("encode_batch (parallel)", "encode per document")
    )
    assert ids_a == ids_b, "batched and per-document encodings differ"
    n_tokens = sum(map(len, ids_a))
    rows = [
        row(
            "tokenizer_encode",
            a,
            b,
            bytes_per_token=round(mb * 1e6 / n_tokens, 3),
            train_mb_per_s=round(train_mb_s, 3),
            vocab_size=tok.get_vocab_size(),
        )
    ]
    return save(
        "tokenizer",
        rows,
        {"documents": len(texts), "megabytes": mb, "tokens": n_tokens, "train_seconds": train_times},
    )


if __name__ == "__main__":
    main()
