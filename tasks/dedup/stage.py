"""Stage `dedup`: drop exact then near duplicates (MinHash LSH), one kept record per cluster.

Writes `documents/` (kept documents, input order), `duplicates.jsonl` (one line per removed document:
`{id, duplicate_of, kind, jaccard_estimate}`) and `dedup_report.json` (counts, LSH bands x rows,
cluster-size histogram, sample pairs with estimated and true Jaccard, timings), all logged to MLflow.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from functools import partial
from pathlib import Path

from conf.dedup import DedupConfig
from tasks.common.artifacts import Manifest
from tasks.common.data import read_documents
from tasks.common.shards import ShardJob, ShardMap, shard_jobs
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.dedup.core import Params, Result, Signed, cluster, sign, true_jaccard

log = logging.getLogger(__name__)
STAGE_VERSION = 3  # 3: output shard i holds what input shard i kept


def params_of(cfg: DedupConfig) -> Params:
    return Params(
        ngram=cfg.ngram,
        num_perm=cfg.num_perm,
        threshold=cfg.threshold,
        seed=cfg.seed,
        normalize=cfg.normalize,
        near=cfg.near,
        verify=cfg.verify,
        false_negative_weight=cfg.false_negative_weight,
        workers=cfg.workers,
        batch_size=cfg.batch_size,
        storage_config=cfg.lsh_storage.storage_config(),
    )


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
    """Sign the input (in-process: one pass, batches in `dedup.workers` processes; on a cluster: one shard
    per task), cluster the signatures here, then write each shard's kept documents in input order."""
    source = next(iter(inputs.values()))
    jobs = shard_jobs(source)
    params = params_of(cfg)
    if map_shards is None:
        parts = [sign(((d.id, d.text) for d in read_documents(source)), params)]
    else:
        parts = map_shards(partial(sign_shard, replace(params, workers=1)), jobs)
    try:
        result = cluster(parts, params)
    except Exception as e:
        if type(e).__module__.split(".")[0] == "redis":  # say which server and which password were used
            raise RuntimeError(f"dedup: {cfg.lsh_storage.describe()}: {type(e).__name__}: {e}") from e
        raise

    samples = [result.duplicates[i] for i in sample_indices(result, cfg.sample_pairs)]
    wanted = {s.index for s in samples} | {s.keeper for s in samples}
    texts: dict[int, str] = {}
    chars = i = 0
    for job in jobs:  # second pass: the kept documents, in input order, shard i to shard i
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
    with open(out / "duplicates.jsonl", "w", encoding="utf-8") as fh:
        for d in result.duplicates:
            rec = {
                "id": result.ids[d.index],
                "duplicate_of": result.ids[d.keeper],
                "kind": d.kind,
                "jaccard_estimate": round(d.jaccard_estimate, 4),
            }
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")

    pairs = [
        {
            "id": result.ids[s.index],
            "duplicate_of": result.ids[s.keeper],
            "jaccard_estimate": round(s.jaccard_estimate, 4),
            "jaccard_true": round(true_jaccard(texts[s.index], texts[s.keeper], cfg.ngram), 4),
            "text": texts[s.index][:300],
            "kept_text": texts[s.keeper][:300],
        }
        for s in samples
    ]
    total, kept = result.total, result.kept
    exact, near = result.count("exact"), result.count("near")
    seconds = result.stats.get("seconds_total", 0.0)
    report = {
        "documents_in": total,
        "documents_kept": kept,
        "exact_duplicates": exact,
        "near_duplicates": near,
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
        # no timings: the report is one of the stage's content-hashed outputs (they go to the metrics)
        "stats": {k: v for k, v in result.stats.items() if not k.startswith("seconds")},
        "sample_pairs": pairs,
    }
    docs_per_second = round(total / seconds, 1) if seconds else 0.0
    (out / "dedup_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    log_.log_artifact(out / "dedup_report.json")
    log_.log_artifact(out / "duplicates.jsonl")
    if pairs:
        log_.log_table({k: [p[k] for p in pairs] for k in pairs[0]}, "dedup_sample_pairs.json")
    for size, n in list(result.cluster_sizes.items())[:200]:  # the histogram as a curve: clusters per size
        log_.log_metrics({"clusters_of_size": n}, step=size)
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
        return f"dedup removed {share:.1%} of documents, more than dedup.max_removed_share={cfg.max_removed_share}"
    return None
