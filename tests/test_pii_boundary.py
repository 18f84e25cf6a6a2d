"""No raw PII leaves the scrub boundary: PII planted in a corpus (in texts, in record ids, in a file
name, in a broken line) must not appear anywhere the pipeline writes - artifacts, manifests, reports,
samples, the MLflow store and its artifacts, the logs - except the document shards of `collect`,
`filter` and `dedup`, the stages that must hold the raw text before `scrub` runs.

The fast test runs the data stages (collect -> filter -> dedup -> scrub) under Prefect, tracked in a
fresh MLflow store under the artifacts root; the slow one runs the whole smoke pipeline on the same
corpus mixed into the smoke preset's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from conf.loader import load_config
from flows.lifecycle import lifecycle
from tasks.common.pii import mask_id, mask_sample, mask_text

# Raw values planted in the corpus, as they are written there.
PII = {
    "EMAIL_ADDRESS": ["margot.fischer@example.org", "hiroshi.tanaka@example.co.jp"],
    "PHONE_NUMBER": [
        "+44 20 7946 0958",
        "07700 900 461",
        "03.93.92.16.85",
        "+49 (0) 30 901820",
        "(212) 555-0187",
    ],
    "CREDIT_CARD": ["4539 1488 0343 6467", "6304 2737 3398"],
    "US_SSN": ["536-22-1234"],
    "IBAN_CODE": ["DE89 3704 0044 0532 0130 00", "gb82west12345698765432"],
    "IP_ADDRESS": ["203.0.113.77", "2001:db8:85a3::8a2e:370:7334"],
}
ID_EMAIL = "carol.white@example.net"  # a record id with PII
FILE_EMAIL = "dave.jones@example.com"  # a file name with PII
BROKEN_SSN = "219-09-9999"  # only in a broken JSON line (collect rejects it)
SENTENCES = [
    "The committee reviewed the quarterly plan for the regional office on Tuesday morning.",
    "Every team wrote down its goals, its risks and the people to ask for help.",
    "Our warehouse in the north moved to a larger building near the river last spring.",
    "Volunteers painted the old library walls a bright shade of green over the weekend.",
    "The bakery on the corner now sells rye bread with caraway seeds every Thursday.",
    "A new bicycle lane connects the railway station with the university campus.",
    "Students presented their robotics projects to parents in the crowded school hall.",
    "The orchestra rehearsed a difficult symphony until late in the evening.",
    "Farmers expect an early harvest because the summer was unusually warm and dry.",
    "The museum opened an exhibition about ancient maps and the sailors who drew them.",
    "Engineers replaced the rusty pipes beneath the main square during the holidays.",
    "Local chess players organised a tournament with prizes donated by the town hall.",
    "The gardener planted tulips, daffodils and a small apple tree behind the house.",
    "Tourists photographed the lighthouse as storm clouds gathered over the harbour.",
    "A retired teacher published a cookbook of recipes collected from her neighbours.",
    "The football club repainted the stands and installed brighter floodlights.",
]


def _doc(i: int, extra: str) -> str:
    """Prose made of four sentences no other document shares in the same order, with `extra` inside."""
    a, b, c, d = (SENTENCES[(i * 3 + k * 5) % len(SENTENCES)] for k in range(4))
    return f"Report {i}. {a} {b} {extra} {c} {d}"


def write_corpus(folder: Path) -> list[str]:
    """A JSONL file and a text file with PII in every place a pipeline could copy it from; returns the
    raw values to look for."""
    folder.mkdir(parents=True)
    values = [v for vs in PII.values() for v in vs]
    records = []
    for i, value in enumerate(values):
        records.append({"id": f"rec-{i}", "text": _doc(i, f"For access contact {value} before noon.")})
    records.append({"id": f"mail-from-{ID_EMAIL}", "text": _doc(20, "Nothing personal in this one.")})
    records.append({"id": "dup-exact", "text": records[0]["text"]})  # dedup: an exact duplicate
    near = records[1]["text"] + " Thanks."
    records.append({"id": "dup-near", "text": near})  # dedup: a near duplicate (a sampled pair)
    records.append({"id": "short-1", "text": f"Call {PII['PHONE_NUMBER'][0]} now"})  # filter: too short
    records.append({"id": "short-2", "text": f"Mail {PII['EMAIL_ADDRESS'][1]}"})
    lines = [json.dumps(r) for r in records]
    lines.insert(3, '{"id": "broken", "text": "ssn ' + BROKEN_SSN + '"')  # not JSON: a collect reject
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / f"notes-{FILE_EMAIL}.txt").write_text(
        _doc(30, "Minutes kept by the secretary."), encoding="utf-8"
    )
    return [*values, ID_EMAIL, FILE_EMAIL, BROKEN_SSN]


def leaks(root: Path, logs: Path, raw: list[str]) -> dict[str, list[str]]:
    """Raw values found in any file under `root` (but collect's, filter's and dedup's document shards)
    or in the log file: {file: [values]}."""
    allowed = {"collect", "filter", "dedup"}
    found: dict[str, list[str]] = {}
    files = [p for p in root.rglob("*") if p.is_file()] + [logs]
    for path in files:
        rel = path.relative_to(root).parts if path.is_relative_to(root) else ()
        if len(rel) > 2 and rel[0] in allowed and rel[2] == "documents":
            continue
        data = path.read_bytes()
        hits = [v for v in raw if v.encode("utf-8") in data]
        if hits:
            found[str(path)] = hits
    return found


@pytest.fixture
def log_file(tmp_path):
    """Every log record (any logger, INFO and up) written to a file, as a log collector would."""
    path = tmp_path / "pipeline.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield path
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


def _config(root: Path, corpus: Path, extra: list[str], with_pydocs: bool):
    files = {"kind": "files", "paths": [f"{corpus}/*.jsonl", f"{corpus}/*.txt"], "name": "planted"}
    sources = [{"kind": "pydocs", "packages": ["stdlib"], "min_chars": 200}] if with_pydocs else []
    return load_config(
        "smoke",
        overrides=[
            f"artifacts_root={root}",
            "tracking.experiment=pii-boundary",
            f"collect.sources={json.dumps([*sources, files])}",
            "filter.max_dropped_share=0.9",
            "dedup.max_removed_share=0.9",
            *extra,
        ],
    )


def test_masking_helpers_hide_pii_and_keep_ids_unique():
    assert mask_text("mail margot.fischer@example.org now") == "mail <EMAIL_ADDRESS> now"
    a, b = (
        mask_id(f"planted:corpus/notes-{FILE_EMAIL}.txt"),
        mask_id("planted:corpus/notes-x@example.com.txt"),
    )
    assert FILE_EMAIL not in a and a.startswith("planted:corpus/<EMAIL_ADDRESS>.txt~") and a != b
    assert mask_id("planted:rec-1") == "planted:rec-1"  # clean ids are kept
    cut = mask_sample("x" * 95 + " call +44 20 7946 0958 today", 100)  # the phone is cut at 100 chars
    assert "7946" not in cut and len(cut) == 100


def test_data_stages_leak_no_raw_pii(prefect_harness, tmp_path, log_file):
    corpus, root = tmp_path / "corpus", tmp_path / "artifacts"
    raw = write_corpus(corpus)
    run = lifecycle(_config(root, corpus, [], with_pydocs=False), ["scrub"])
    results = run.results
    assert {"collect", "filter", "dedup", "scrub"} <= set(results)
    assert results["collect"].manifest.counts["skipped_errors"] >= 1  # the broken line
    assert results["filter"].manifest.counts["dropped"] >= 2  # the short documents
    dedup_counts = results["dedup"].manifest.counts
    assert dedup_counts["exact_duplicates"] >= 1 and dedup_counts["near_duplicates"] >= 1
    scrub = results["scrub"].manifest
    assert scrub.counts["pii_left"] == 0 and scrub.counts["pii_total"] >= len(raw) - 4
    # the raw values are in the stages that must hold them, so the check below is not vacuous
    collect_docs = b"".join(p.read_bytes() for p in (root / "collect").rglob("documents/*"))
    assert all(v.encode() in collect_docs for v in raw if v != BROKEN_SSN)
    assert (root / "mlflow.db").exists() and any((root / "mlruns").rglob("*.json"))
    assert os.path.getsize(log_file) > 0
    assert leaks(root, log_file, raw) == {}


@pytest.mark.slow
def test_smoke_pipeline_leaks_no_raw_pii(prefect_harness, tmp_path, log_file):
    corpus, root = tmp_path / "corpus", tmp_path / "artifacts"
    raw = write_corpus(corpus)
    run = lifecycle(_config(root, corpus, [], with_pydocs=True))
    assert "export" in run.results and run.results["scrub"].manifest.counts["pii_left"] == 0
    assert leaks(root, log_file, raw) == {}
