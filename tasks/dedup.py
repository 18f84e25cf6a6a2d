"""Stage `dedup`: drop exact duplicates (hash of normalized text), keeping the first occurrence."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from pathlib import Path

from conf.dedup import DedupConfig
from tasks.common.artifacts import Manifest
from tasks.common.data import ShardWriter, read_documents
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

log = logging.getLogger(__name__)
STAGE_VERSION = 1

_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, lowercase, whitespace collapsed: what 'the same text' means for exact dedup."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def text_key(text: str, normalized: bool = True) -> str:
    return hashlib.sha1((normalize(text) if normalized else text).encode("utf-8")).hexdigest()


def dedup(cfg: DedupConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    source = next(iter(inputs.values()))
    first_seen: dict[str, str] = {}
    exact_dups = 0
    with ShardWriter(out) as writer, open(out / "duplicates.jsonl", "w", encoding="utf-8") as dups:
        total = 0
        for doc in read_documents(source):
            total += 1
            key = text_key(doc.text, cfg.normalize)
            if key in first_seen:
                exact_dups += 1
                dups.write(json.dumps({"id": doc.id, "duplicate_of": first_seen[key], "kind": "exact"}) + "\n")
                continue
            first_seen[key] = doc.id
            writer.write(doc)
    kept = writer.count
    log.info("dedup: %d in, %d exact duplicates, %d kept", total, exact_dups, kept)
    return StageReport(
        counts={"documents_in": total, "exact_duplicates": exact_dups, "documents": kept, "chars": writer.chars},
        metrics={"removed_share": (total - kept) / total if total else 0.0},
    )


def gate(cfg: DedupConfig, manifest: Manifest) -> str | None:
    share = manifest.metrics.get("removed_share", 0.0)
    if share > cfg.max_removed_share:
        return f"dedup removed {share:.1%} of documents, more than dedup.max_removed_share={cfg.max_removed_share}"
    return None
