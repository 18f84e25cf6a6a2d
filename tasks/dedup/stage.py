"""Stage `dedup`: drop exact then near duplicates (MinHash LSH), one kept record per cluster.

Writes `documents/` (kept documents, input order), `duplicates.jsonl` (one line per removed document:
`{id, duplicate_of, kind, jaccard_estimate}`) and `dedup_report.json` (counts, LSH bands x rows,
cluster-size histogram, sample pairs with estimated and true Jaccard), all logged to MLflow; timings go
to the metrics only, so the same input and config give the same files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from conf.dedup import DedupConfig, RedisStorage
from tasks.common.artifacts import Manifest
from tasks.common.data import Document
from tasks.common.jsonl import write_jsonl
from tasks.common.pii import mask_id, mask_sample
from tasks.common.progress import Progress, file_bytes, map_with_progress
from tasks.common.shards import (
    PoolShardMap,
    ShardJob,
    ShardMap,
    concat_parts,
    part_path,
    remove_parts,
    shard_jobs,
)
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.dedup import disk
from tasks.dedup.core import (
    PRELOAD,
    Duplicate,
    Params,
    Result,
    Signed,
    cluster,
    redis_password,
    sign,
    true_jaccard,
)

log = logging.getLogger(__name__)
STAGE_VERSION = 3  # 3: output shard i holds what input shard i kept
DUPLICATES = "duplicates.jsonl"
REPORT = "dedup_report.json"


def sample_ranks(near: int, n: int) -> list[int]:
    """Which of `near` near duplicates (counted in input order) to show: up to `n`, spread evenly."""
    if near <= n:
        return list(range(near))
    return [round(j * (near - 1) / max(n - 1, 1)) for j in range(n)]


def sample_indices(result: Result, n: int) -> list[int]:
    """Up to `n` near duplicates spread evenly over the input (positions into `result.duplicates`)."""
    near = [i for i, d in enumerate(result.duplicates) if d.kind == "near"]
    return [near[r] for r in sample_ranks(len(near), n)]


def choose_method(cfg: DedupConfig, source: Manifest, jobs: list[ShardJob]) -> str:
    """`dedup.method`, with `auto` resolved: on disk when the in-memory path would need more than
    `dedup.max_memory_mb` (about 7 KB per document), else in memory (faster for small corpora)."""
    if cfg.method != "auto":
        return cfg.method
    need_mb = estimate_documents(source, jobs) * disk.BYTES_PER_RECORD_IN_MEMORY / 2**20
    return "disk" if need_mb > cfg.max_memory_mb else "memory"


def estimate_documents(source: Manifest, jobs: list[ShardJob]) -> int:
    """The upstream's document count when its manifest has one, else a guess from the shards' bytes."""
    docs = source.counts.get("documents")
    if isinstance(docs, int) and docs > 0:
        return docs
    return max(1, sum(file_bytes([j.path for j in jobs])) // 1000)


def sign_shard(p: Params, job: ShardJob) -> Signed:
    """Exact keys and signatures of one input shard: the map step of the stage on a cluster."""
    return sign(((d.id, d.text) for d in job.documents()), p)


def dedup(
    cfg: DedupConfig,
    inputs: dict[str, Manifest],
    out: Path,
    log_: MetricLogger,
    map_shards: ShardMap | None = None,
) -> StageReport:
    """Sign the input, cluster the signatures (in memory, or on disk for large corpora: `dedup.method`),
    write the kept documents, then report. Both methods write the same files."""
    source = next(iter(inputs.values()))
    jobs = shard_jobs(source)
    method = choose_method(cfg, source, jobs)
    log.info("dedup: %s method (dedup.method=%s, max_memory_mb=%d)", method, cfg.method, cfg.max_memory_mb)
    result: Result | disk.DiskResult
    if method == "disk":
        result, pairs, chars = dedup_on_disk(cfg, source, jobs, out, log_, map_shards)
    else:
        result, pairs, chars = dedup_in_memory(cfg, source, jobs, out, log_, map_shards)
    report = dedup_report(cfg, result, pairs)
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    log_outputs(log_, out, result, pairs)
    return stage_report(cfg, result, report, pairs, chars, method)


def dedup_in_memory(
    cfg: DedupConfig,
    source: Manifest,
    jobs: list[ShardJob],
    out: Path,
    log_: MetricLogger,
    map_shards: ShardMap | None,
) -> tuple[Result, list[dict[str, Any]], int]:
    result = find_clusters(cfg, source, jobs, map_shards, log_)
    samples = [result.duplicates[i] for i in sample_indices(result, cfg.sample_pairs)]
    wanted = {s.index for s in samples} | {s.keeper for s in samples}
    with Progress("dedup", "dedup-write", total=sum(file_bytes([j.path for j in jobs])), log=log_) as bar:
        texts, chars = write_kept(result, jobs, out, wanted, bar)
    write_jsonl(out / DUPLICATES, duplicate_records(result))
    return result, sample_pairs(samples, result, texts, cfg.ngram), chars


def dedup_on_disk(
    cfg: DedupConfig,
    source: Manifest,
    jobs: list[ShardJob],
    out: Path,
    log_: MetricLogger,
    map_shards: ShardMap | None,
) -> tuple[disk.DiskResult, list[dict[str, Any]], int]:
    """The bounded-memory path (`tasks/dedup/disk.py`): every step a map over shards or partitions, on
    the stage's map (the local pool of `dedup.workers`, or Dask), its work folder removed at the end."""
    with PoolShardMap(cfg.workers, preload=PRELOAD) as pool:
        # the local pool's processes share the budget; a cluster task has it to itself
        budget = cfg.max_memory_mb if map_shards else max(64, cfg.max_memory_mb // max(1, cfg.workers))
        return _dedup_on_disk(cfg, source, jobs, out, log_, map_shards or pool, budget)


def _dedup_on_disk(
    cfg: DedupConfig,
    source: Manifest,
    jobs: list[ShardJob],
    out: Path,
    log_: MetricLogger,
    runner: ShardMap,
    budget_mb: int,
) -> tuple[disk.DiskResult, list[dict[str, Any]], int]:
    params = Params.from_config(cfg)
    sizes = file_bytes([j.path for j in jobs])
    work = out / "_work"
    with Progress("dedup", "dedup-sign", total=sum(sizes), log=log_) as bar:

        def signed(parts: list[disk.ShardSigned]) -> None:
            for part, size in zip(parts, sizes, strict=True):
                bar.update(size, part.records)

        plan, offsets, result = disk.detect(
            params, jobs, work, runner, estimate_documents(source, jobs), budget_mb, signed
        )
    picks = set(sample_ranks(result.near, cfg.sample_pairs))
    samples = [row for row in near_rows(plan, len(jobs)) if row[0] in picks]
    wanted = {r[1][0] for r in samples} | {r[1][1] for r in samples}
    with Progress("dedup", "dedup-write", total=sum(sizes), log=log_) as bar:
        fn = partial(write_disk_shard, plan, offsets, str(out), frozenset(wanted))
        parts = map_with_progress(runner, fn, jobs, bar, sizes, docs_of=lambda p: p[2])
    concat_parts((part_path(out, DUPLICATES, j.index) for j in jobs), out / DUPLICATES)
    remove_parts(out)
    texts = {i: t for _, part_texts, _ in parts for i, t in part_texts.items()}
    chars = sum(c for c, _, _ in parts)
    pairs = [
        sample_pair(row[4], row[5], row[3], texts[row[0]], texts[row[1]], cfg.ngram) for _, row in samples
    ]
    shutil.rmtree(work, ignore_errors=True)
    return result, pairs, chars


def near_rows(plan: disk.Plan, shards: int) -> Iterator[tuple[int, list[Any]]]:
    """(rank, row) of every near duplicate, in input order (rows: `disk.keepers_step`)."""
    rank = 0
    for s in range(shards):
        for row in disk.shard_duplicates(plan, s):
            if row[2] == "near":
                yield rank, row
                rank += 1


def write_disk_shard(
    plan: disk.Plan, offsets: list[int], out: str, wanted: frozenset[int], job: ShardJob
) -> tuple[int, dict[int, str], int]:
    """One input shard's kept documents and its `duplicates.jsonl` part; returns (characters written,
    texts of the wanted records, documents read)."""
    folder = Path(plan.work) / "shards" / f"{job.index:05d}"
    ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
    dups = disk.shard_duplicates(plan, job.index)
    dropped = {row[0] for row in dups}
    texts: dict[int, str] = {}
    i = offsets[job.index]
    with job.writer(Path(out)) as writer:
        for local, doc in enumerate(job.documents()):
            if local >= len(ids) or doc.id != ids[local]:
                raise RuntimeError(
                    f"{job.path}: documents changed while dedup read them (record {local + 1})"
                )
            if i not in dropped:
                writer.write(doc)
            if i in wanted:
                texts[i] = doc.text
            i += 1
    write_jsonl(
        part_path(Path(out), DUPLICATES, job.index), (duplicate_record(r[4], r[5], r[2], r[3]) for r in dups)
    )
    return writer.chars, texts, len(ids)


def find_clusters(
    cfg: DedupConfig,
    source: Manifest,
    jobs: list[ShardJob],
    map_shards: ShardMap | None,
    log_: MetricLogger | None = None,
) -> Result:
    """In-process: one signing pass over the whole input, batches in `dedup.workers` processes; on a
    cluster: one shard per task, each signed in its task's process. The clusters do not depend on which."""
    params = Params.from_config(cfg)
    sizes = file_bytes([j.path for j in jobs])
    with Progress("dedup", "dedup-sign", total=sum(sizes), log=log_) as bar:
        if map_shards is None:
            parts = [sign(((d.id, d.text) for d in documents_with_progress(jobs, sizes, bar)), params)]
        else:
            fn = partial(sign_shard, replace(params, workers=1))
            parts = map_with_progress(map_shards, fn, jobs, bar, sizes, docs_of=lambda s: len(s.ids))
    try:
        return cluster(parts, params)
    except Exception as e:
        storage = cfg.lsh_storage
        if isinstance(storage, RedisStorage) and type(e).__module__.split(".")[0] == "redis":
            # say which server, and whether a password was found where the config says
            where = storage.describe(redis_password(storage))
            raise RuntimeError(f"dedup: {where}: {type(e).__name__}: {e}") from e
        raise


def documents_with_progress(jobs: list[ShardJob], sizes: list[int], bar: Progress) -> Iterator[Document]:
    """The documents of every shard in order, advancing `bar` as each shard is read."""
    for job, size in zip(jobs, sizes, strict=True):
        n = 0
        for doc in job.documents():
            n += 1
            yield doc
        bar.update(size, n)


def write_kept(
    result: Result, jobs: list[ShardJob], out: Path, wanted: set[int], bar: Progress | None = None
) -> tuple[dict[int, str], int]:
    """Second pass over the input: each shard's kept documents, in input order, into the same shard index.

    Returns the texts of the `wanted` records (the sample pairs) and the characters written."""
    texts: dict[int, str] = {}
    chars = i = 0
    for job in jobs:
        with job.writer(out) as writer:
            for doc in job.documents():
                if i >= result.total or doc.id != result.ids[i]:
                    raise RuntimeError(
                        f"{job.path}: documents changed while dedup read them (record {i + 1})"
                    )
                if result.keep[i]:
                    writer.write(doc)
                if i in wanted:
                    texts[i] = doc.text
                i += 1
        chars += writer.chars
        if bar is not None:
            bar.update(os.path.getsize(job.path), writer.count)
    return texts, chars


def duplicate_records(result: Result) -> Iterator[dict[str, Any]]:
    """One `duplicates.jsonl` record per removed document, in input order."""
    for d in result.duplicates:
        yield duplicate_record(result.ids[d.index], result.ids[d.keeper], d.kind, d.jaccard_estimate)


def duplicate_record(rid: Any, keeper_id: Any, kind: str, estimate: float) -> dict[str, Any]:
    """One `duplicates.jsonl` line (both methods write these)."""
    return {
        "id": mask_id(rid),  # ids may hold PII (file names): masked, as every sample
        "duplicate_of": mask_id(keeper_id),
        "kind": kind,
        "jaccard_estimate": round(estimate, 4),
    }


def sample_pairs(
    samples: list[Duplicate], result: Result, texts: dict[int, str], ngram: int
) -> list[dict[str, Any]]:
    """The sampled near-duplicate pairs with their true Jaccard, to show how good the estimate is."""
    return [
        sample_pair(
            result.ids[s.index],
            result.ids[s.keeper],
            s.jaccard_estimate,
            texts[s.index],
            texts[s.keeper],
            ngram,
        )
        for s in samples
    ]


def sample_pair(
    rid: Any, keeper_id: Any, estimate: float, text: str, kept_text: str, ngram: int
) -> dict[str, Any]:
    """One sampled near-duplicate pair of the report (both methods show these)."""
    return {
        "id": mask_id(rid),
        "duplicate_of": mask_id(keeper_id),
        "jaccard_estimate": round(estimate, 4),
        "jaccard_true": round(true_jaccard(text, kept_text, ngram), 4),
        "text": mask_sample(text, 300),  # no raw PII leaves dedup (scrub comes later)
        "kept_text": mask_sample(kept_text, 300),
    }


def dedup_report(
    cfg: DedupConfig, result: Result | disk.DiskResult, pairs: list[dict[str, Any]]
) -> dict[str, Any]:
    """`dedup_report.json`: one of the stage's content-hashed outputs, so no timings (they go to the
    metrics)."""
    total, kept = result.total, result.kept
    return {
        "documents_in": total,
        "documents_kept": kept,
        "exact_duplicates": result.count("exact"),
        "near_duplicates": result.count("near"),
        "removed_share": (total - kept) / total if total else 0.0,
        "lsh": {
            "num_perm": cfg.num_perm,
            "threshold": cfg.threshold,
            "bands": result.bands,
            "rows": result.rows,
            "ngram": cfg.ngram,
            "verify": cfg.verify,
            "false_negative_weight": cfg.false_negative_weight,
        },
        "cluster_sizes": {str(k): v for k, v in result.cluster_sizes.items()},
        "stats": {k: v for k, v in result.stats.items() if not k.startswith("seconds")},
        "sample_pairs": pairs,
    }


def log_outputs(
    log_: MetricLogger, out: Path, result: Result | disk.DiskResult, pairs: list[dict[str, Any]]
) -> None:
    log_.log_artifact(out / REPORT)
    log_.log_artifact(out / DUPLICATES)
    if pairs:
        log_.log_table({k: [p[k] for p in pairs] for k in pairs[0]}, "dedup_sample_pairs.json")
    for size, n in list(result.cluster_sizes.items())[:200]:  # the histogram as a curve: clusters per size
        log_.log_metrics({"clusters_of_size": n}, step=size)


def stage_report(
    cfg: DedupConfig,
    result: Result | disk.DiskResult,
    report: dict[str, Any],
    pairs: list[dict[str, Any]],
    chars: int,
    method: str = "memory",
) -> StageReport:
    total, kept = result.total, result.kept
    exact, near = result.count("exact"), result.count("near")
    seconds = result.stats.get("seconds_total", 0.0)
    docs_per_second = round(total / seconds, 1) if seconds else 0.0
    log.info(
        "dedup: %d in, %d exact + %d near duplicates removed, %d kept (LSH %d bands x %d rows, %.0f docs/s)",
        total,
        exact,
        near,
        kept,
        result.bands,
        result.rows,
        docs_per_second,
    )
    metrics = {"removed_share": report["removed_share"], "lsh_bands": result.bands, "lsh_rows": result.rows}
    if pairs:
        metrics["sample_jaccard_abs_error"] = sum(
            abs(p["jaccard_estimate"] - p["jaccard_true"]) for p in pairs
        ) / len(pairs)
    if seconds:
        metrics["docs_per_second"] = docs_per_second
        metrics.update({k: round(v, 4) for k, v in result.stats.items() if k.startswith("seconds")})
    return StageReport(
        counts={
            "documents_in": total,
            "exact_duplicates": exact,
            "near_duplicates": near,
            "documents": kept,
            "chars": chars,
            "clusters": sum(result.cluster_sizes.values()),
        },
        metrics=metrics,
        # where the LSH index lived does not change the output: not in the (content-hashed) report
        extra={
            "lsh_bands": result.bands,
            "lsh_rows": result.rows,
            "cluster_sizes": report["cluster_sizes"],
            "lsh_storage": cfg.lsh_storage.type,
            "method": method,
        },
    )


def gate(cfg: DedupConfig, manifest: Manifest) -> str | None:
    share = manifest.metrics.get("removed_share", 0.0)
    if share > cfg.max_removed_share:
        return (
            f"dedup removed {share:.1%} of documents, "
            f"more than dedup.max_removed_share={cfg.max_removed_share}"
        )
    return None
