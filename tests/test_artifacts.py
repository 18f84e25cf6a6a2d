"""Content hashes, atomic manifests, and recovery from half-written stage folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pytest

from conf.base import StageConfig
from tasks.common.artifacts import (
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    sha256_file,
    sha256_files,
    stage_hash,
    write_manifest,
)
from tasks.common.stage import QualityGateError, StageReport, StageSpec, run_stage
from tests.helpers import docs, documents_stage


class ToyConfig(StageConfig):
    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset({"log_every", "workers"})
    factor: int = 2
    log_every: int = 10
    workers: int = 1


class ToyPipeline:
    """Stands in for PipelineConfig: a holder with the stage's config section."""

    def __init__(self, toy: ToyConfig):
        self.toy = toy


def toy_stage(cfg: ToyConfig, inputs, out: Path, log) -> StageReport:
    """Writes one file whose content depends on the config and on the input."""
    n = next(iter(inputs.values())).counts["documents"] if inputs else 0
    (out / "result.txt").write_text(f"{n * cfg.factor}\n")
    return StageReport(counts={"value": n * cfg.factor})


SPEC = StageSpec("toy", toy_stage, ("upstream",), version=1, key_figure="value")


def test_hash_stable_and_sensitive(tmp_path):
    up = documents_stage(tmp_path, docs("a", "b"))
    base = SPEC.hash_for(ToyPipeline(ToyConfig()), {"upstream": up})
    assert base == SPEC.hash_for(ToyPipeline(ToyConfig()), {"upstream": up})  # same config -> same hash
    assert len(base) == 12
    # run-only knobs keep the hash
    assert base == SPEC.hash_for(ToyPipeline(ToyConfig(log_every=1, workers=8)), {"upstream": up})
    # a result-affecting change, a version bump, or a different input gives a new hash
    assert base != SPEC.hash_for(ToyPipeline(ToyConfig(factor=3)), {"upstream": up})
    bumped = StageSpec("toy", toy_stage, ("upstream",), version=2)
    assert base != bumped.hash_for(ToyPipeline(ToyConfig()), {"upstream": up})
    other = documents_stage(tmp_path / "o", docs("a", "c"))
    assert base != SPEC.hash_for(ToyPipeline(ToyConfig()), {"upstream": other})


def test_fingerprint_keys_the_hash_and_the_manifest(tmp_path):
    """A file the config only names (the runner fingerprints it) re-keys the stage when its content does."""
    data = tmp_path / "data.txt"
    data.write_text("one")
    spec = StageSpec(
        "toy", toy_stage, ("upstream",), fingerprint=lambda cfg: {"_data_sha256": sha256_files([str(data)])}
    )
    up = documents_stage(tmp_path / "up", docs("a"))
    cfg = ToyPipeline(ToyConfig())
    before = spec.hash_for(cfg, {"upstream": up})
    assert before != SPEC.hash_for(cfg, {"upstream": up})
    m = run_stage(spec, cfg, {"upstream": up}, tmp_path / "root").manifest
    assert m.stage_hash == before and m.config["_data_sha256"] == {str(data): sha256_file(data)}
    data.write_text("two")
    assert spec.hash_for(cfg, {"upstream": up}) != before
    assert ToyConfig().result_fields() == {"factor": 2}  # the config itself describes, it hashes nothing


def test_hash_ignores_input_key_order():
    assert stage_hash("s", 1, {"a": 1, "b": 2}, {}) == stage_hash("s", 1, {"b": 2, "a": 1}, {})


def test_run_stage_writes_manifest_last_and_caches(tmp_path):
    up = documents_stage(tmp_path / "up", docs("a", "b", "c"))
    root = tmp_path / "root"
    first = run_stage(SPEC, ToyPipeline(ToyConfig()), {"upstream": up}, root)
    assert first.status == "ran"
    m = first.manifest
    assert Path(m.path) == root / "toy" / m.stage_hash
    assert (Path(m.path) / "result.txt").read_text() == "6\n"
    assert m.files["result.txt"].size == 2 and len(m.files["result.txt"].sha256) == 64
    assert m.counts == {"value": 6} and m.inputs == {"upstream": up.content_hash}
    assert read_manifest(Path(m.path)) == m
    second = run_stage(SPEC, ToyPipeline(ToyConfig()), {"upstream": up}, root)
    assert second.status == "cached" and second.manifest == m


def test_half_written_folder_is_cleaned_and_rebuilt(tmp_path):
    up = documents_stage(tmp_path / "up", docs("a"))
    root = tmp_path / "root"
    cfg = ToyPipeline(ToyConfig())
    folder = root / "toy" / SPEC.hash_for(cfg, {"upstream": up})
    folder.mkdir(parents=True)
    (folder / "partial.bin").write_bytes(b"\0" * 10)  # a killed run's leftovers, no manifest
    assert read_manifest(folder) is None  # never mistaken for a finished stage
    result = run_stage(SPEC, cfg, {"upstream": up}, root)
    assert result.status == "ran"
    assert not (folder / "partial.bin").exists()
    assert set(result.manifest.files) == {"result.txt"}


def test_tampered_output_triggers_rebuild(tmp_path):
    up = documents_stage(tmp_path / "up", docs("a"))
    root = tmp_path / "root"
    cfg = ToyPipeline(ToyConfig())
    m = run_stage(SPEC, cfg, {"upstream": up}, root).manifest
    (Path(m.path) / "result.txt").unlink()
    again = run_stage(SPEC, cfg, {"upstream": up}, root)
    assert again.status == "ran" and (Path(m.path) / "result.txt").exists()


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    (tmp_path / "x.txt").write_text("x")
    manifest = Manifest(stage="s", stage_hash="h", stage_version=1, path=str(tmp_path), config={})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(manifest)
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]  # no temp file left behind


def test_failing_stage_leaves_no_manifest(tmp_path):
    def broken(cfg, inputs, out, log):
        (out / "half.txt").write_text("half")
        raise RuntimeError("boom")

    spec = StageSpec("toy", broken, ("upstream",))
    up = documents_stage(tmp_path / "up", docs("a"))
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(spec, ToyPipeline(ToyConfig()), {"upstream": up}, tmp_path / "root")
    folder = tmp_path / "root" / "toy" / spec.hash_for(ToyPipeline(ToyConfig()), {"upstream": up})
    assert (folder / "half.txt").exists() and read_manifest(folder) is None


def test_quality_gate_names_the_gate(tmp_path):
    spec = StageSpec("toy", toy_stage, ("upstream",), gate=lambda cfg, m: "value too small")
    up = documents_stage(tmp_path / "up", docs("a"))
    with pytest.raises(QualityGateError, match="quality gate 'toy' failed: value too small"):
        run_stage(spec, ToyPipeline(ToyConfig()), {"upstream": up}, tmp_path / "root")


def test_manifest_file_lookup_errors_name_outputs(tmp_path):
    up = documents_stage(tmp_path, docs("a"))
    with pytest.raises(FileNotFoundError, match="has no output 'nope'.*documents/shard-00000.jsonl"):
        up.file("nope")
