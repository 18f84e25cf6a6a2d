"""Tokenizer bench: BPE training MB/s, encoding MB/s (batched + Rust-parallel `encode_batch` against
one-document-at-a-time `encode`, the loop people write first) and bytes per token, on the pydocs corpus.

Then the whole `tokenizer` stage at two corpus sizes (the pydocs texts repeated, in 2000-document
shards, decontaminated against 200 eval documents): MB/s, peak RSS (this process and its workers), CPU
seconds per wall second (above 1: more than one core works), and the growth from the small size to the
large one (bounded memory: peak RSS about flat while the corpus grows 4x, once both sizes have as
many shards as cores: each planner worker, min(cores, shards) of them, is a process of its own).

    .venv/bin/python -m bench.bench_tokenizer [--copies 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import PeakRss, measure_pair, row, save
from conf.collect import PydocsSource
from conf.tokenizer import TokenizerConfig
from tasks.collect import SourceStats, pydocs_documents
from tasks.tokenizer import train_bpe


def write_corpus(root: Path, copies: int) -> tuple[int, float]:
    """`copies` repeats of the pydocs corpus as 2000-document shards (a child process builds them, so
    the stage's peak RSS is not the bench's document list), plus 200 eval documents: (docs, MB)."""

    from tasks.common.data import Document
    from tasks.common.testing import documents_stage

    texts = [d.text for d in pydocs_documents(PydocsSource(), SourceStats())]
    docs = [Document(f"c{c}-{i}", t, "bench") for c in range(copies) for i, t in enumerate(texts)]
    documents_stage(root, docs, "scrub", shard_docs=2000)
    held = root / "align_data" / "bench"
    held.mkdir(parents=True)
    (held / "eval_documents.jsonl").write_text(
        "".join(json.dumps({"id": f"eval-{i}", "text": t}) + "\n" for i, t in enumerate(texts[:200]))
    )
    return len(docs), sum(len(d.text.encode()) for d in docs) / 1e6


def stage_at(copies: int, root: Path) -> dict:
    """The tokenizer stage over `copies` repeats of the corpus: seconds, MB, peak RSS, CPU/wall."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tasks.common.artifacts import read_manifest
    from tasks.common.testing import seal
    from tasks.common.tracking import MetricLogger
    from tasks.tokenizer import train_tokenizer

    folder = root / f"x{copies}"
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as child:
        n_docs, mb = child.submit(write_corpus, folder, copies).result()
    corpus = read_manifest(folder / "scrub" / "test")
    assert corpus is not None
    held = folder / "align_data" / "bench"
    inputs = {"scrub": corpus, "align_data": seal(held, "align_data")}
    out = folder / "out"
    out.mkdir()
    cfg = TokenizerConfig(vocab_size=4096, train_max_chars=20_000_000)
    cpu0 = os.times()
    with PeakRss() as rss:
        t0 = time.perf_counter()
        report = train_tokenizer(cfg, inputs, out, MetricLogger())
        wall = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = sum(cpu1[:4]) - sum(cpu0[:4])  # user + system, this process and its finished workers
    return {
        "documents": n_docs,
        "megabytes": round(mb, 1),
        "seconds": round(wall, 2),
        "mb_per_s": round(mb / wall, 2),
        "peak_rss_mb": round(rss.peak_mb, 1),
        "cpu_per_wall": round(cpu / wall, 2),
        "decontaminated": report.counts["decontaminated_docs"],
    }


def stage_rows(copies: int) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory(prefix="bench-tokenizer-") as tmp:
        small = stage_at(copies, Path(tmp))
        large = stage_at(4 * copies, Path(tmp))
    growth = {
        "bench": "tokenizer_stage_growth_x4",
        "time_ratio": round(large["seconds"] / small["seconds"], 2),
        "peak_rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 2),
        "small": small,
        "large": large,
    }
    return growth, {"bench": "tokenizer_stage", **large}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=2, help="corpus repeats of the small size (large: 4x)")
    args = p.parse_args(argv or [])
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
    growth, stage = stage_rows(args.copies)
    rows.append(stage)
    return save(
        "tokenizer",
        rows,
        {
            "documents": len(texts),
            "megabytes": mb,
            "tokens": n_tokens,
            "train_seconds": train_times,
            "stage_growth": growth,
        },
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
