"""Stage `dedup`: drop exact then near duplicates (MinHash LSH), one kept record per cluster.

Writes `documents/` (kept documents, input order), `duplicates.jsonl` (one line per removed document:
`{id, duplicate_of, kind, jaccard_estimate}`) and `dedup_report.json` (counts, LSH bands x rows,
cluster-size histogram, sample pairs with estimated and true Jaccard), all logged to MLflow; timings go
to the metrics only, so the same input and config give the same files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from conf.dedup import DedupConfig, RedisStorage
from tasks.common.artifacts import Manifest
from tasks.common.data import read_documents
from tasks.common.jsonl import write_jsonl
from tasks.common.shards import ShardJob, ShardMap, shard_jobs
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.dedup.core import (
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


def sample_indices(result: Result, n: int) -> list[int]:
    """Up to `n` near duplicates spread evenly over the input (positions into `result.duplicates`)."""
    near = [i for i, d in enumerate(result.duplicates) if d.kind == "near"]
    if len(near) <= n:
        return near
    return [near[round(j * (len(near) - 1) / max(n - 1, 1))] for j in range(n)]


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
    """Sign the input, cluster the signatures here, write the kept documents, then report."""
    source = next(iter(inputs.values()))
    jobs = shard_jobs(source)
    result = find_clusters(cfg, source, jobs, map_shards)
    samples = [result.duplicates[i] for i in sample_indices(result, cfg.sample_pairs)]
    texts, chars = write_kept(result, jobs, out, {s.index for s in samples} | {s.keeper for s in samples})
    write_jsonl(out / DUPLICATES, duplicate_records(result))
    pairs = sample_pairs(samples, result, texts, cfg.ngram)
    report = dedup_report(cfg, result, pairs)
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    log_outputs(log_, out, result, pairs)
    return stage_report(cfg, result, report, pairs, chars)


def find_clusters(
    cfg: DedupConfig, source: Manifest, jobs: list[ShardJob], map_shards: ShardMap | None
) -> Result:
    """In-process: one signing pass over the whole input, batches in `dedup.workers` processes; on a
    cluster: one shard per task, each signed in its task's process. The clusters do not depend on which."""
    params = Params.from_config(cfg)
    if map_shards is None:
        parts = [sign(((d.id, d.text) for d in read_documents(source)), params)]
    else:
        parts = map_shards(partial(sign_shard, replace(params, workers=1)), jobs)
    try:
        return cluster(parts, params)
    except Exception as e:
        storage = cfg.lsh_storage
        if isinstance(storage, RedisStorage) and type(e).__module__.split(".")[0] == "redis":
            # say which server, and whether a password was found where the config says
            where = storage.describe(redis_password(storage))
            raise RuntimeError(f"dedup: {where}: {type(e).__name__}: {e}") from e
        raise


def write_kept(
    result: Result, jobs: list[ShardJob], out: Path, wanted: set[int]
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
    return texts, chars


def duplicate_records(result: Result) -> Iterator[dict[str, Any]]:
    """One `duplicates.jsonl` record per removed document, in input order."""
    for d in result.duplicates:
        yield {
            "id": result.ids[d.index],
            "duplicate_of": result.ids[d.keeper],
            "kind": d.kind,
            "jaccard_estimate": round(d.jaccard_estimate, 4),
        }


def sample_pairs(
    samples: list[Duplicate], result: Result, texts: dict[int, str], ngram: int
) -> list[dict[str, Any]]:
    """The sampled near-duplicate pairs with their true Jaccard, to show how good the estimate is."""
    return [
        {
            "id": result.ids[s.index],
            "duplicate_of": result.ids[s.keeper],
            "jaccard_estimate": round(s.jaccard_estimate, 4),
            "jaccard_true": round(true_jaccard(texts[s.index], texts[s.keeper], ngram), 4),
            "text": texts[s.index][:300],
            "kept_text": texts[s.keeper][:300],
        }
        for s in samples
    ]


def dedup_report(cfg: DedupConfig, result: Result, pairs: list[dict[str, Any]]) -> dict[str, Any]:
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


def log_outputs(log_: MetricLogger, out: Path, result: Result, pairs: list[dict[str, Any]]) -> None:
    log_.log_artifact(out / REPORT)
    log_.log_artifact(out / DUPLICATES)
    if pairs:
        log_.log_table({k: [p[k] for p in pairs] for k in pairs[0]}, "dedup_sample_pairs.json")
    for size, n in list(result.cluster_sizes.items())[:200]:  # the histogram as a curve: clusters per size
        log_.log_metrics({"clusters_of_size": n}, step=size)


def stage_report(
    cfg: DedupConfig, result: Result, report: dict[str, Any], pairs: list[dict[str, Any]], chars: int
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
