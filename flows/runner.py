"""Turns registered stages into Prefect tasks and runs a plan of them under one MLflow parent run.

Each stage is a Prefect task without a Prefect cache and without persisted results: the stage folder's
manifest, verified against the files on disk (`tasks/common/stage.py: finished_manifest`), is the only
source of truth for what is done. Prefect's result store would be a second one, and a dangerous one:
its records are pickles, unpickled on a cache hit, so anyone able to write to a shared artifacts root
could run code in the next pipeline. A finished stage comes back from its task as status "cached".
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import Task

from conf.schema import PipelineConfig
from flows.engine import DaskShardMap, ShardCluster
from flows.environment import artifacts_root, tracking_uri
from flows.progress import prefect_progress
from flows.stages import STAGES, plan
from tasks.common.artifacts import Manifest, stage_dir
from tasks.common.process import guard
from tasks.common.progress import progress_sink
from tasks.common.stage import (
    PermanentStageError,
    PrecheckError,
    StageResult,
    StageSpec,
    finished_manifest,
    run_stage,
)
from tasks.common.tracking import MetricLogger, MlflowLogger, Tracker

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State, TaskRun

log = logging.getLogger(__name__)


# The headline figures each stage's manifest gives the pipeline's parent MLflow run (fnmatch patterns over
# the stage's counts and metrics, besides its `key_figure`), so two pipeline runs compare side by side in
# the runs table without opening child runs. Logged as `<stage>/<key>`; evaluate's `eval/*` as they are.
PARENT_FIGURES: dict[str, tuple[str, ...]] = {
    "collect": ("documents",),
    "filter": ("documents", "dropped_share"),
    "dedup": ("documents", "exact_duplicates", "near_duplicates", "removed_share"),
    "scrub": ("documents", "documents_with_pii", "pii_total"),
    "align_data": ("sft_train", "sft_eval", "prefs_*", "ppo_prompts"),
    "tokenizer": ("train_tokens", "val_tokens", "decontaminated_docs", "bytes_per_token_val"),
    "pretrain": ("final/val_loss", "final/val_ppl", "final/train_loss"),
    "sft": ("eval_loss", "eval_token_accuracy"),
    "reward": ("eval_accuracy", "eval_accuracy_*", "eval_margin"),
    "judge": ("eval_accuracy", "eval_accuracy_*"),
    "ppo": ("kl_ref_eval",),
    "evaluate": ("eval/*", "lm_eval/*"),
    "export": ("export/*/ppl_change", "export/*/token_agreement", "export/*/file_bytes"),
}
NAMESPACED = ("eval/", "lm_eval/", "export/")  # already unique across stages: logged under their own name
SERVER_APP = "prefect.server.api.server:create_app"  # the temporary server's uvicorn app, in its command


def parent_figures(results: dict[str, StageResult]) -> dict[str, float]:
    """The numeric headline figures of the finished stages (ran or cached), named for the parent run."""
    figures: dict[str, float] = {}
    for name, result in results.items():
        spec = STAGES.get(name)
        patterns = (*PARENT_FIGURES.get(name, ()), *([spec.key_figure] if spec and spec.key_figure else []))
        values = {**result.manifest.counts, **result.manifest.metrics}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if any(fnmatch.fnmatchcase(key, p) for p in patterns):
                figures[key if key.startswith(NAMESPACED) else f"{name}/{key}"] = float(value)
    return figures


@dataclass(frozen=True)
class TrackingHandle:
    """What a task needs to reach the pipeline's MLflow run (plain strings: safe to pass to workers)."""

    tracking_uri: str
    experiment: str
    parent_run_id: str

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.experiment)


def _run_stage_task(
    config: PipelineConfig,
    inputs: dict[str, Manifest],
    tracking: TrackingHandle,
    root: str,
    dask_address: str | None = None,
) -> StageResult:
    """The body of every stage task: `run_stage` for the task's stage, its shards on Dask if asked."""
    from prefect.context import get_run_context

    context = get_run_context()
    if not isinstance(context, TaskRunContext):
        raise RuntimeError("a stage runs as a Prefect task, not in a flow's own context")
    spec = STAGES[context.task.name]
    map_shards = DaskShardMap(spec.name, dask_address) if dask_address and spec.sharded else None
    with progress_sink(prefect_progress()):  # long steps as progress artifacts of this task run
        return run_stage(
            spec,
            config,
            inputs,
            Path(root),
            tracking.tracker(),
            tracking.parent_run_id,
            map_shards=map_shards,
        )


def _worth_retrying(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry transient failures (I/O, a rank killed by the OS), not ones that would repeat."""
    try:
        state.result()
    except PermanentStageError:
        return False
    except Exception:
        return True
    return True


def stage_task(
    spec: StageSpec,
) -> Task[[PipelineConfig, dict[str, Manifest], TrackingHandle, str, str | None], StageResult]:
    """The stage's Prefect task: retries and a name in the UI; no Prefect cache, nothing persisted."""
    return task(
        name=spec.name,
        task_run_name=f"{spec.name}",
        retries=spec.retries,
        retry_delay_seconds=2,
        retry_condition_fn=_worth_retrying,
        cache_policy=NO_CACHE,
        persist_result=False,
    )(_run_stage_task)


@dataclass
class PipelineRun:
    """The outcome of a pipeline run, for the summary table and for callers."""

    run_id: str | None
    tracking_uri: str
    experiment_id: str | None = None
    results: dict[str, StageResult] = field(default_factory=dict)
    # a stage that finished its folder but failed its quality gate: not a result, but its figures count
    gate_failed: dict[str, StageResult] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)  # the headline figures on the parent run
    seconds: float = 0.0
    failed_stage: str | None = None
    error: str | None = None

    def manifests(self) -> dict[str, Manifest]:
        return {name: r.manifest for name, r in self.results.items()}


def run_pipeline(
    config: PipelineConfig, targets: list[str] | None = None, run_name: str | None = None
) -> PipelineRun:
    """Run the stages `targets` need, each through its Prefect task, under one MLflow parent run."""
    started = time.perf_counter()
    stages = plan(targets)
    root = artifacts_root(config.artifacts_root)
    root.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(config.tracking.tracking_uri)
    guard_prefect_server()
    tracker = Tracker.for_pipeline(root, uri, config.tracking.experiment)
    tracker.end_orphaned_runs()
    parent = _start_parent(tracker, config, stages, root, run_name)
    handle = TrackingHandle(tracker.tracking_uri, config.tracking.experiment, parent.run_id)
    run = PipelineRun(parent.run_id, tracker.tracking_uri, tracker.experiment_id)
    status = "FAILED"
    cluster = ShardCluster(config.execution)
    try:
        for name in stages:
            precheck_planned(stages, config, run)
            run.results[name] = _run_one(STAGES[name], config, root, run, handle, cluster)
        status = "FINISHED"
    finally:
        cluster.close()
        run.seconds = time.perf_counter() - started
        _log_summary(parent, run)
        tracker.end(parent, status)
    return run


def precheck_planned(stages: list[str], config: PipelineConfig, run: PipelineRun) -> None:
    """Fail now if a planned stage cannot run with what the finished stages made (e.g. sft without
    alignment data): before the stages in between spend hours training."""
    done = run.manifests()
    for name in stages:
        spec = STAGES[name]
        if name in done or spec.precheck is None:
            continue
        message = spec.precheck(config, done)
        if message:
            run.failed_stage, run.error = name, f"PrecheckError: {message}"
            raise PrecheckError(f"stage '{name}' cannot run: {message}")


def guard_prefect_server() -> None:
    """Prefect starts a temporary API server as a child of this process when no PREFECT_API_URL is set;
    Prefect stops it at exit, but a killed pipeline cannot: the guard (`tasks/common/process.py`) does."""
    import psutil

    pids = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if SERVER_APP in " ".join(child.cmdline()):
                pids.append(child.pid)
    guard(pids)


def _start_parent(
    tracker: Tracker, config: PipelineConfig, stages: list[str], root: Path, run_name: str | None
) -> MlflowLogger:
    """The pipeline's MLflow parent run: the whole config as params, preset, stages and root as tags."""
    return tracker.start_pipeline(
        run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        params=config.model_dump(mode="json"),
        tags={
            "lmforge.preset": config.preset,
            "lmforge.stages": ",".join(stages),
            "lmforge.artifacts_root": root,
        },
    )


def _run_one(
    spec: StageSpec,
    config: PipelineConfig,
    root: Path,
    run: PipelineRun,
    handle: TrackingHandle,
    cluster: ShardCluster,
) -> StageResult:
    """One stage through its Prefect task, with every upstream manifest of this run as its inputs.

    The task itself finds a finished folder (verified against its manifest) and returns it as cached,
    with a child run pointing at the run that built it, after checking its quality gate again
    (thresholds are not part of the stage hash: a stricter gate must still fail).
    """
    inputs = {up: run.results[up].manifest for up in spec.inputs}
    folder = stage_dir(root, spec.name, spec.hash_for(config, inputs))
    # a Dask cluster only for a sharded stage that has work to do
    address = cluster.address() if spec.sharded and finished_manifest(folder) is None else None
    t0 = time.perf_counter()
    state = stage_task(spec)(config, inputs, handle, str(root), address, return_state=True)
    try:
        result: StageResult = state.result()
    except BaseException as e:
        run.failed_stage, run.error = spec.name, f"{type(e).__name__}: {e}"
        finished = finished_manifest(folder)
        if finished is not None:  # the folder is whole, so its gate failed: its figures still compare
            run.gate_failed[spec.name] = StageResult(finished, "gate_failed", time.perf_counter() - t0)
        raise
    return result


def _log_summary(parent: MetricLogger, run: PipelineRun) -> None:
    """Stage timings, hashes and child-run ids, and every stage's headline figures, on the parent run:
    what the runs table compares pipeline runs by (cached stages included: their manifests hold them)."""
    run.figures = parent_figures({**run.results, **run.gate_failed})
    parent.log_metrics(run.figures)
    if run.gate_failed:
        parent.set_tags({"lmforge.gate_failed": ",".join(run.gate_failed)})
    rows = []
    for name, r in run.results.items():
        parent.set_tags(
            {f"lmforge.stage.{name}.run_id": r.run_id, f"lmforge.stage.{name}.hash": r.manifest.stage_hash}
        )
        parent.log_metrics({f"stage_seconds/{name}": r.seconds})
        rows.append(
            {
                "stage": name,
                "status": r.status,
                "seconds": round(r.seconds, 2),
                "hash": r.manifest.stage_hash,
                "path": r.manifest.path,
            }
        )
    parent.log_metrics(
        {
            "pipeline_seconds": run.seconds,
            "stages_ran": sum(r.status == "ran" for r in run.results.values()),
            "stages_cached": sum(r.status == "cached" for r in run.results.values()),
        }
    )
    if rows:
        parent.log_dict(rows, "pipeline/stages.json")
