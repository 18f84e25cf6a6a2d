"""The stage contract and the Prefect-free runner that gives a stage its folder, cache and run.

A stage is a plain function::

    def dedup(cfg: DedupConfig, inputs: dict[str, Manifest], out: Path, log: MetricLogger) -> StageReport

It reads only its inputs' files, writes only under `out`, reports through `log`, and returns its
counts and metrics. A `sharded` stage also takes `map_shards` (`tasks/common/shards.py`): how to run
its per-shard work, which the runner may send to a cluster. The runner hashes, locks, cleans
half-written folders, opens the MLflow child run, writes the manifest last, and applies the stage's
quality gate.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conf.base import StageConfig
from tasks.common.artifacts import (
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    stage_dir,
    stage_hash,
    stamp_path,
    verify_manifest,
    write_manifest,
)
from tasks.common.shards import ShardMap
from tasks.common.tracking import MetricLogger, Tracker

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    """What a stage function returns; the runner turns it into the manifest."""

    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # fnmatch patterns of outputs that record this run, not its result (timings, absolute paths): listed
    # and verified, but left out of the content hash (`Manifest.volatile`)
    volatile: tuple[str, ...] = ()


class PermanentStageError(RuntimeError):
    """A failure that would repeat on retry (bad data, a diverged run, a failed gate): never retried."""


class QualityGateError(PermanentStageError):
    """A stage finished but its output failed a configured quality gate."""


class PrecheckError(PermanentStageError):
    """A planned stage cannot run with what its upstream stages made (or will make): raised before any
    later stage runs, so a pipeline never trains for hours and then finds its alignment data missing."""


StageFn = Callable[[Any, dict[str, Manifest], Path, MetricLogger], StageReport]
GateFn = Callable[[Any, Manifest], str | None]
# config -> JSON-able facts the config only points at (a file's content): they key the stage hash
FingerprintFn = Callable[[Any], dict[str, Any]]
# (pipeline config, manifests of the stages finished so far) -> why the stage cannot run, or None
PrecheckFn = Callable[[Any, dict[str, Manifest]], str | None]


@dataclass(frozen=True)
class StageSpec:
    """How the pipeline knows a stage: its function, upstream stages and version.

    `name` is the stage's one name: its module under `tasks/`, its config section (`conf/<name>.py`),
    its artifacts folder `<root>/<name>/<hash12>/`, its MLflow `lmforge.stage` tag and `make stage NAME=`.

    `fingerprint` covers what a config names but cannot describe, e.g. the content of a local dataset
    file: the runner evaluates it and mixes it into the stage hash (and the manifest's `config`), so
    editing the file re-runs the stage while `conf/` stays a pure description.
    """

    name: str
    fn: StageFn
    inputs: tuple[str, ...] = ()
    version: int = 1
    retries: int = 0
    resumable: bool = False  # keep an unfinished folder so the stage can resume from its checkpoints
    key_figure: str | None = None  # a count or metric shown in the pipeline's summary table
    gate: GateFn | None = None  # returns a failure message when the output is not good enough
    sharded: bool = False  # fn takes `map_shards=`: its per-shard work can run on a cluster
    fingerprint: FingerprintFn | None = None  # input fingerprint keyed into the hash (see above)
    # input stage -> the only files of it that key this stage's hash (default: the whole folder), e.g. the
    # tokenizer reads align_data's eval documents only, so new training pairs do not re-run pretraining
    keyed_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    precheck: PrecheckFn | None = None  # checked by the runner before and between stages (see PrecheckError)

    def config_of(self, pipeline_cfg: Any) -> StageConfig:
        cfg: StageConfig = getattr(pipeline_cfg, self.name)
        return cfg

    def keyed_config(self, pipeline_cfg: Any) -> dict[str, Any]:
        """What keys the stage hash besides the inputs: the result-affecting config plus the fingerprint."""
        cfg = self.config_of(pipeline_cfg)
        fingerprint = self.fingerprint(cfg) if self.fingerprint else {}
        return {**cfg.result_fields(), **fingerprint}

    def keyed_inputs(self, inputs: dict[str, Manifest]) -> dict[str, Manifest]:
        """The inputs as they key the hash: an input named in `keyed_files` counts by those files only."""
        return {
            name: m.model_copy(
                update={"stage_hash": "", "files": {f: e for f, e in m.files.items() if f in keep}}
            )
            if (keep := self.keyed_files.get(name)) is not None
            else m
            for name, m in inputs.items()
        }

    def hash_for(self, pipeline_cfg: Any, inputs: dict[str, Manifest]) -> str:
        return stage_hash(self.name, self.version, self.keyed_config(pipeline_cfg), self.keyed_inputs(inputs))


@dataclass
class StageResult:
    manifest: Manifest
    status: str  # "ran" | "cached"
    seconds: float
    run_id: str | None = None

    def key_figure(self, name: str | None) -> str:
        if not name:
            return ""
        m = self.manifest
        value = m.counts.get(name, m.metrics.get(name, m.extra.get(name)))
        if value is None:
            return ""
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
        return f"{name}={shown}"


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock beside the stage folder, so two pipelines never build the same folder at once."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def finished_manifest(folder: Path) -> Manifest | None:
    """The manifest of a finished, intact stage folder (sizes and sha256 checked), or None.

    A folder whose files no longer match loses its manifest, so it is rebuilt, never reused.
    """
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    problems = verify_manifest(manifest)
    if problems:
        log.warning(
            "stage folder %s no longer matches its manifest (%s); rebuilding", folder, "; ".join(problems)
        )
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        stamp_path(folder).unlink(missing_ok=True)
        return None
    return manifest


class InputChangedError(PermanentStageError):
    """An upstream stage's files changed after it finished: rebuilding on the same input would repeat it."""


def check_inputs(spec: StageSpec, inputs: dict[str, Manifest]) -> None:
    """Verify every input folder against its manifest right before the stage reads it."""
    for name, manifest in inputs.items():
        problems = verify_manifest(manifest)
        if problems:
            raise InputChangedError(
                f"stage {spec.name}: input stage {name} ({manifest.path}) changed since it finished: "
                f"{'; '.join(problems[:5])}; re-run the pipeline to rebuild it"
            )


def check_gate(spec: StageSpec, cfg: StageConfig, manifest: Manifest) -> None:
    if spec.gate is None:
        return
    message = spec.gate(cfg, manifest)
    if message:
        raise QualityGateError(f"quality gate '{spec.name}' failed: {message} (stage folder {manifest.path})")


def run_stage(
    spec: StageSpec,
    pipeline_cfg: Any,
    inputs: dict[str, Manifest],
    root: Path,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    map_shards: ShardMap | None = None,
) -> StageResult:
    """Run one stage into its content-addressed folder, or return the finished folder's manifest.

    `map_shards` runs a sharded stage's per-shard work (default: in-process, the stage's own way).
    """
    cfg = spec.config_of(pipeline_cfg)
    keyed = spec.keyed_config(pipeline_cfg)  # once: the hash and the manifest see the same fingerprint
    hash12 = stage_hash(spec.name, spec.version, keyed, spec.keyed_inputs(inputs))
    out = stage_dir(root, spec.name, hash12)
    started = time.perf_counter()
    with folder_lock(out):
        done = finished_manifest(out)
        if done is not None:
            result = StageResult(done, "cached", time.perf_counter() - started)
            if tracker and parent_run_id:
                result.run_id = record_cached(tracker, parent_run_id, spec, done, inputs)
            check_gate(spec, cfg, done)
            return result
        check_inputs(spec, inputs)
        prepare_folder(spec, out)
        logger: MetricLogger = MetricLogger()
        if tracker and parent_run_id:
            logger = tracker.start_stage(
                parent_run_id, spec.name, hash12, inputs, cfg.model_dump(mode="json")
            )
        try:
            report = call_stage(spec, cfg, inputs, out, logger, map_shards)
            seconds = time.perf_counter() - started
            manifest = seal_stage(spec, hash12, keyed, inputs, out, report, logger, seconds)
            check_gate(spec, cfg, manifest)
        except BaseException:
            if tracker:
                tracker.end(logger, "FAILED")
            raise
        if tracker:
            tracker.end(logger, "FINISHED")
        return StageResult(manifest, "ran", seconds, logger.run_id)


def prepare_folder(spec: StageSpec, out: Path) -> None:
    """An empty folder for the stage, or (resumable stages) the unfinished one with its checkpoints."""
    if out.exists() and not spec.resumable:
        log.warning("removing unfinished stage folder %s (no manifest: an earlier run was interrupted)", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def call_stage(
    spec: StageSpec,
    cfg: StageConfig,
    inputs: dict[str, Manifest],
    out: Path,
    logger: MetricLogger,
    map_shards: ShardMap | None,
) -> StageReport:
    """The stage function itself; only a sharded stage is told how to run its shards."""
    extra = {"map_shards": map_shards} if spec.sharded and map_shards is not None else {}
    return spec.fn(cfg, inputs, out, logger, **extra)


def seal_stage(
    spec: StageSpec,
    hash12: str,
    keyed: dict[str, Any],
    inputs: dict[str, Manifest],
    out: Path,
    report: StageReport,
    logger: MetricLogger,
    seconds: float,
) -> Manifest:
    """Write the manifest last (it marks the folder finished), then log its figures and the manifest."""
    manifest = write_manifest(
        Manifest(
            stage=spec.name,
            stage_hash=hash12,
            stage_version=spec.version,
            path=str(out),
            config=keyed,
            inputs={name: m.content_hash for name, m in inputs.items()},
            counts=report.counts,
            metrics=report.metrics,
            extra=report.extra,
            mlflow_run_id=logger.run_id,
            seconds=round(seconds, 3),
        ),
        volatile=report.volatile,
    )
    logger.log_metrics({**{f"count/{k}": v for k, v in report.counts.items()}, **report.metrics})
    logger.log_metrics({"stage_seconds": seconds})
    logger.log_artifact(out / MANIFEST_NAME)
    return manifest


def record_cached(
    tracker: Tracker, parent_run_id: str, spec: StageSpec, manifest: Manifest, inputs: dict[str, Manifest]
) -> str | None:
    """A cached stage still gets a child run in this pipeline run, pointing at the run that built it."""
    logger = tracker.start_stage(
        parent_run_id,
        spec.name,
        manifest.stage_hash,
        inputs,
        manifest.config,
        cached=True,
        source_run_id=manifest.mlflow_run_id,
    )
    logger.log_metrics({**{f"count/{k}": v for k, v in manifest.counts.items()}, **manifest.metrics})
    tracker.end(logger, "FINISHED")
    return logger.run_id
