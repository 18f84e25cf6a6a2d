"""Dedup's bounded-memory method (`tasks/dedup/disk.py`) writes exactly what the in-memory method writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench.webcorpus import WebCorpus
from conf.dedup import DedupConfig
from tasks.common.artifacts import Manifest
from tasks.common.data import Document
from tasks.common.shards import PoolShardMap, shard_jobs
from tasks.common.tracking import MetricLogger
from tasks.dedup import dedup, disk
from tasks.dedup import stage as dedup_stage
from tests.helpers import documents_stage


def web_docs(n: int, seed: int = 3) -> list[Document]:
    """Web-like pages with ~10% near duplicates and ~1% exact copies, plus empty and word-less texts,
    exact copies of them, and ties of length for the keeper rule."""
    docs = [Document(r["id"], r["text"], r["source"]) for r in WebCorpus(n, seed=seed).records()]
    extra = ["", "...", "", "!!! ???", "same length a", "same length b", "same length a"]
    return docs + [Document(f"x{i}", t, "edge") for i, t in enumerate(extra)]


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run(tmp_path: Path, upstream: Manifest, name: str, **cfg) -> tuple[dict[str, str], dict]:
    out = tmp_path / name
    out.mkdir()
    report = dedup(DedupConfig(**cfg), {"filter": upstream}, out, MetricLogger())
    return folder_hashes(out), report.counts


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Manifest:
    root = tmp_path_factory.mktemp("web")
    return documents_stage(root, web_docs(1200), stage="filter", shard_docs=250)


@pytest.mark.parametrize(
    "options",
    [{}, {"verify": False}, {"near": False}, {"normalize": False, "threshold": 0.6}],
    ids=["default", "no-verify", "exact-only", "raw-keys"],
)
def test_disk_method_writes_the_same_files_as_memory(tmp_path, upstream, monkeypatch, options):
    monkeypatch.setattr(disk, "partitions", lambda rows, row_bytes, mb: 3)  # several partitions per step
    memory, counts = run(tmp_path, upstream, "memory", method="memory", **options)
    on_disk, disk_counts = run(tmp_path, upstream, "disk", method="disk", **options)
    assert on_disk == memory and disk_counts == counts
    assert counts["exact_duplicates"] > 0
    if options.get("near", True):
        assert counts["near_duplicates"] > 50 and counts["clusters"] > 50
    assert not (tmp_path / "disk" / "_work").exists()


def test_disk_steps_run_on_worker_processes(tmp_path, upstream):
    """The same steps through a process pool (the Dask engine maps them the same way): same result."""
    p = dedup_stage.Params.from_config(DedupConfig())
    jobs = shard_jobs(upstream)
    here = disk.detect(p, jobs, tmp_path / "a", lambda fn, js: [fn(j) for j in js], 1200, 64)[2]
    with PoolShardMap(2) as runner:
        pool = disk.detect(p, jobs, tmp_path / "b", runner, 1200, 64)[2]
    for r in (here, pool):
        r.stats = {k: v for k, v in r.stats.items() if not k.startswith("seconds")}
    assert pool == here and here.near > 0


def test_auto_switches_to_disk_above_the_memory_budget():
    cfg = DedupConfig(max_memory_mb=64)
    small = Manifest(
        stage="filter", stage_hash="x", stage_version=1, path="/x", config={}, counts={"documents": 5000}
    )
    large = Manifest(
        stage="filter", stage_hash="x", stage_version=1, path="/x", config={}, counts={"documents": 50_000}
    )
    assert dedup_stage.choose_method(cfg, small, []) == "memory"
    assert dedup_stage.choose_method(cfg, large, []) == "disk"
    assert dedup_stage.choose_method(cfg.model_copy(update={"method": "memory"}), large, []) == "memory"
    assert (
        "method" in DedupConfig.NOT_RESULT_AFFECTING and "max_memory_mb" in DedupConfig.NOT_RESULT_AFFECTING
    )


def test_partitions_grow_with_the_data_not_the_budget():
    assert disk.partitions(1000, 40, 1024) == 1
    assert disk.partitions(100_000_000, 40, 1024) == disk.partitions(50_000_000, 40, 1024) * 2
    assert disk.partitions(100_000_000, 40, 512) == disk.partitions(100_000_000, 40, 1024) * 2


@pytest.mark.slow
def test_disk_method_on_the_dask_engine_writes_the_same_files(tmp_path, upstream, prefect_harness):
    """Every disk step as Prefect task runs on a real 2-worker LocalCluster: the same folder as in memory."""
    from distributed import LocalCluster

    from flows.engine import DaskShardMap

    memory, counts = run(tmp_path, upstream, "memory", method="memory")
    out = tmp_path / "dask"
    out.mkdir()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        report = dedup(
            DedupConfig(method="disk"),
            {"filter": upstream},
            out,
            MetricLogger(),
            map_shards=DaskShardMap("dedup", cluster.scheduler_address),
        )
    assert folder_hashes(out) == memory and report.counts == counts
