"""Stage `scrub`: replace PII in every document with `<TYPE>` placeholders, then rescan the output.

Outputs: `documents/` (same order and source; scrubbed text; ids and meta strings with PII masked
by `tasks.common.pii.mask_id`/`mask_value`: they stay unique and hold no raw PII), `redactions.jsonl`
(`{id, pii: [{type, start, end}]}` offsets into the upstream text, for audits; never the PII itself) and
`pii_report.json` (counts, samples with the PII masked, the leak check). The leak check reads the
written shards back and scans them again: anything still detectable counts as `pii_left`, and the
gate fails the flow when it exceeds `scrub.max_pii_left`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from conf.scrub import ScrubConfig
from tasks.common.artifacts import Manifest
from tasks.common.data import Document, read_shard
from tasks.common.jsonl import JsonlWriter
from tasks.common.pii import mask_id, mask_value
from tasks.common.pool import OrderedPool
from tasks.common.progress import Progress, file_bytes, map_with_progress
from tasks.common.shards import (
    ShardJob,
    ShardMap,
    concat_parts,
    first_per_key,
    part_path,
    remove_parts,
    shard_jobs,
)
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.scrub.detect import Span, placeholder, redact, scrubbed_offsets
from tasks.scrub.parallel import batched, find_batches, worker_pool

log = logging.getLogger(__name__)
STAGE_VERSION = 3  # 2: output shard i is what input shard i became; 3: multi-locale detectors, ids masked
REPORT = "pii_report.json"
REDACTIONS = "redactions.jsonl"
MAX_LEAK_IDS = 20


def sample_context(scrubbed: str, start: int, end: int, width: int) -> str:
    """The placeholder at [start, end) of the scrubbed text with `width` characters each side, one line.

    Taken from the scrubbed text, so other PII nearby is masked too: a sample never shows PII.
    """
    left = scrubbed[max(0, start - width) : start]
    right = scrubbed[end : end + width]
    return " ".join(f"{left}{scrubbed[start:end]}{right}".split())


@dataclass
class Tally:
    """What the scrub pass saw: counts by type and masked samples (never the PII itself)."""

    docs: int = 0
    with_pii: int = 0
    n_bytes: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    samples: list[dict] = field(default_factory=list)
    sampled: Counter[str] = field(default_factory=Counter)

    def add(self, doc_id: str, original: str, scrubbed: str, spans: list[Span], cfg: ScrubConfig) -> None:
        self.docs += 1
        self.n_bytes += len(original.encode("utf-8"))
        if not spans:
            return
        self.with_pii += 1
        self.by_type.update(sp.type for sp in spans)
        for sp, (s, e) in zip(spans, scrubbed_offsets(spans), strict=True):
            if self.sampled[sp.type] < cfg.samples_per_type:
                self.sampled[sp.type] += 1
                context = sample_context(scrubbed, s, e, cfg.sample_context)
                self.samples.append(
                    {"id": doc_id, "type": sp.type, "placeholder": placeholder(sp.type), "context": context}
                )


@dataclass
class ScrubPart:
    """What scrubbing one shard found (picklable: it comes back from a cluster worker)."""

    tally: Tally
    chars: int
    left: Counter[str]
    leak_ids: list[str]
    seconds: float


def scrub_shard(cfg: ScrubConfig, out: Path, job: ShardJob, pool: OrderedPool | None = None) -> ScrubPart:
    """Scrub one input shard into output shard `job.index` (+ its redactions part), then rescan what it
    wrote."""
    started = time.perf_counter()
    tally = Tally()
    batches = ((batch, [d.text for d in batch]) for batch in batched(job.documents(), cfg.batch_docs))
    with job.writer(out) as writer, JsonlWriter(part_path(out, REDACTIONS, job.index)) as red:
        for batch, found in find_batches(batches, cfg, pool):
            for doc, spans in zip(batch, found, strict=True):
                text = redact(doc.text, spans)
                doc_id = mask_id(doc.id)  # ids and meta (file names, urls) may hold PII too
                tally.add(doc_id, doc.text, text, spans, cfg)
                if spans:
                    red.write({"id": doc_id, "pii": [sp.to_json() for sp in spans]})
                writer.write(Document(doc_id, text, doc.source, mask_value(doc.meta)))
    seconds = time.perf_counter() - started
    left, leak_ids = leak_check(writer.paths, cfg, pool)
    return ScrubPart(tally, writer.chars, left, leak_ids, seconds)


def scrub(
    cfg: ScrubConfig,
    inputs: dict[str, Manifest],
    out: Path,
    log_: MetricLogger,
    map_shards: ShardMap | None = None,
) -> StageReport:
    """Scrub every input shard, then merge the tallies and the redactions into one report."""
    source = inputs["dedup"] if "dedup" in inputs else next(iter(inputs.values()))
    jobs = shard_jobs(source)
    parts = scrub_shards(cfg, jobs, out, log_, map_shards)
    concat_parts((part_path(out, REDACTIONS, job.index) for job in jobs), out / REDACTIONS)
    remove_parts(out)
    report = pii_report(cfg, parts)
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log_.log_artifact(out / REPORT)
    if report["samples"]:
        rows = report["samples"]
        log_.log_table({k: [s[k] for s in rows] for k in ("id", "type", "context")}, "pii_samples.json")
    return stage_report(cfg, parts, report)


def scrub_shards(
    cfg: ScrubConfig, jobs: list[ShardJob], out: Path, log_: MetricLogger, map_shards: ShardMap | None
) -> list[ScrubPart]:
    """In-process (no `map_shards`), the shards share one pool of `pii.workers` processes; on a cluster
    each shard is scrubbed in-process by one cluster worker. The output is the same either way."""
    sizes = file_bytes([job.path for job in jobs])
    with Progress("scrub", total=sum(sizes), log=log_) as bar:  # terminal bar, Prefect artifact, MB/s
        if map_shards is not None:
            fn = partial(scrub_shard, cfg.model_copy(update={"workers": 1}), out)
            return map_with_progress(map_shards, fn, jobs, bar, sizes, docs_of=lambda p: p.tally.docs)
        parts: list[ScrubPart] = []
        with worker_pool(cfg) as pool:
            for job, size in zip(jobs, sizes, strict=True):
                parts.append(scrub_shard(cfg, out, job, pool))
                bar.update(size, parts[-1].tally.docs)
                log_.log_metrics({"progress/documents": sum(p.tally.docs for p in parts)}, step=job.index)
    return parts


def pii_report(cfg: ScrubConfig, parts: list[ScrubPart]) -> dict[str, Any]:
    """`pii_report.json`, merged from the shards: one of the stage's content-hashed outputs, so no timings."""
    docs = sum(p.tally.docs for p in parts)
    with_pii = sum(p.tally.with_pii for p in parts)
    by_type: Counter[str] = Counter()
    left_by_type: Counter[str] = Counter()
    for p in parts:
        by_type.update(p.tally.by_type)
        left_by_type.update(p.left)
    return {
        "documents": docs,
        "documents_with_pii": with_pii,
        "pii_total": sum(by_type.values()),
        "by_type": {t: by_type[t] for t in cfg.entities},
        "pii_left": sum(left_by_type.values()),
        "pii_left_by_type": {t: left_by_type[t] for t in cfg.entities if left_by_type[t]},
        "leak_documents": [i for p in parts for i in p.leak_ids][:MAX_LEAK_IDS],
        "entities": list(cfg.entities),
        "samples": first_per_key((s for p in parts for s in p.tally.samples), "type", cfg.samples_per_type),
    }


def stage_report(cfg: ScrubConfig, parts: list[ScrubPart], report: dict[str, Any]) -> StageReport:
    docs, with_pii, total, pii_left = (
        report[k] for k in ("documents", "documents_with_pii", "pii_total", "pii_left")
    )
    mb = sum(p.tally.n_bytes for p in parts) / 1e6
    scrub_seconds = sum(p.seconds for p in parts)
    log.info(
        "scrub: %d documents, %d with PII, %d spans %s; %d left after rescan; %.1f MB/s",
        docs,
        with_pii,
        total,
        {t: n for t, n in report["by_type"].items() if n},
        pii_left,
        mb / scrub_seconds if scrub_seconds else 0.0,
    )
    return StageReport(
        counts={
            "documents": docs,
            "documents_with_pii": with_pii,
            "pii_total": total,
            **{f"pii_{t}": report["by_type"][t] for t in cfg.entities},
            "pii_left": pii_left,
            "chars": sum(p.chars for p in parts),
        },
        metrics={
            "pii_docs_share": with_pii / docs if docs else 0.0,
            "pii_per_mb": total / mb if mb else 0.0,
            "scrub_mb_per_s": mb / scrub_seconds if scrub_seconds else 0.0,
        },
        extra={"leak_documents": report["leak_documents"], "report": REPORT, "redactions": REDACTIONS},
    )


def leak_check(
    shards: list[Path], cfg: ScrubConfig, pool: OrderedPool | None = None
) -> tuple[Counter[str], list[str]]:
    """Scan written shards again: PII still detectable by type, and (some of) the documents holding it."""
    left: Counter[str] = Counter()
    ids: list[str] = []
    docs = (doc for path in shards for doc in read_shard(path))
    batches = ((batch, [d.text for d in batch]) for batch in batched(docs, cfg.batch_docs))
    for batch, found in find_batches(batches, cfg, pool):
        for doc, spans in zip(batch, found, strict=True):
            if spans:
                left.update(sp.type for sp in spans)
                if len(ids) < MAX_LEAK_IDS:
                    ids.append(doc.id)
    return left, ids


def gate(cfg: ScrubConfig, manifest: Manifest) -> str | None:
    left = manifest.counts.get("pii_left", 0)
    if left > cfg.max_pii_left:
        where = ", ".join(manifest.extra.get("leak_documents", [])[:5])
        return (
            f"the rescan of the scrubbed documents still finds {left} PII span(s) (documents {where}), "
            f"more than scrub.max_pii_left={cfg.max_pii_left}; see {REPORT} in the stage folder"
        )
    return None
