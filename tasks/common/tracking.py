"""MLflow tracking: one parent run per pipeline run, one nested child run per stage.

Everything goes through `MlflowClient` with explicit run ids, never `mlflow.start_run()`'s active run:
MLflow's active run is thread-local and Prefect runs tasks on worker threads (and training stages run
in torchrun subprocesses, which receive their run id through the environment).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from tasks.common.process import owner, owner_alive

log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3.17's UI opens the training-runs table for it
RUN_ID_ENV = "LMFORGE_MLFLOW_RUN_ID"
MAX_PARAM_LEN = 6000
SERVED_SCHEMES = ("http", "https", "databricks")  # tracking URIs whose server decides where artifacts go
OWNER_TAG = "lmforge.owner"  # host:pid:start time of the process that created the run (and ends it)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole (rendered as text by MLflow)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
                timeout=5,
                cwd=Path(__file__).resolve().parents[2],
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


class RunRecord(TypedDict):
    """What a stage may read of another MLflow run (e.g. an upstream stage's): params, metrics, tags."""

    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version: registry name, version number and the artifact URI it was made from."""

    name: str
    version: int
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class MetricLogger:
    """What a stage sees of tracking. This base class drops everything (the no-op default).

    Besides logging to its own run, a stage may read other runs of the same store (`read_run`) and
    register a model (`register_model`); without tracking both return None, so a stage written
    against this interface runs the same with or without MLflow.
    """

    run_id: str | None = None
    tracking_uri: str | None = None

    def read_run(self, run_id: str) -> RunRecord | None:
        """Another run of this store; None without tracking. Raises LookupError when the store lacks it."""
        return None

    def register_model(
        self,
        folder: Path,
        name: str,
        *,
        tags: Mapping[str, str],
        description: str | None = None,
        model_tags: Mapping[str, str] | None = None,
        model_description: str | None = None,
        artifact_path: str = "model",
    ) -> ModelVersion | None:
        """Log `folder` to this run under `artifact_path` and register it as a new version of `name`
        (creating the registered model with `model_tags`/`model_description` if new). None without
        tracking: nothing is logged or registered."""
        return None

    def set_model_alias(self, name: str, alias: str, version: int) -> None:
        """Point registry alias `alias` of model `name` at `version` (`models:/name@alias`); a no-op
        without tracking."""

    def subprocess_env(self) -> dict[str, str]:
        """Variables that let a child process (a torchrun rank) log to this run (`MlflowLogger.from_env`)."""
        return {}

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: Any, artifact_file: str) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_table(self, data: Mapping[str, list[Any]], artifact_file: str) -> None: ...


class MlflowLogger(MetricLogger):
    """Logs to one existing MLflow run by id."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.tracking_uri: str = tracking_uri
        self.run_id: str = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)

    @classmethod
    def from_env(cls) -> MetricLogger:
        """The logger a subprocess (e.g. torchrun rank 0) gets from its parent, or a no-op one."""
        run_id = os.environ.get(RUN_ID_ENV)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        return cls(uri, run_id) if run_id and uri else MetricLogger()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_table(self, data: Mapping[str, list[Any]], artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=dict(data), artifact_file=artifact_file)

    def read_run(self, run_id: str) -> RunRecord | None:
        try:
            run = self.client.get_run(run_id)
        except Exception as e:  # MlflowException: e.g. a run recorded in another tracking store
            from conf.schema import redact_uri  # the message is logged: no password in it

            raise LookupError(
                f"MLflow run {run_id} not readable from {redact_uri(self.tracking_uri)}: {e}"
            ) from e
        return RunRecord(
            params=dict(run.data.params), metrics=dict(run.data.metrics), tags=dict(run.data.tags)
        )

    def register_model(
        self,
        folder: Path,
        name: str,
        *,
        tags: Mapping[str, str],
        description: str | None = None,
        model_tags: Mapping[str, str] | None = None,
        model_description: str | None = None,
        artifact_path: str = "model",
    ) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        self.log_artifact(folder, artifact_path)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, tags=dict(model_tags or {}), description=model_description
            )
        source = f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self.client.create_model_version(
            name, source=source, run_id=self.run_id, tags=dict(tags), description=description
        )
        return ModelVersion(name, int(version.version), source)

    def set_model_alias(self, name: str, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def subprocess_env(self) -> dict[str, str]:
        return {RUN_ID_ENV: self.run_id, "MLFLOW_TRACKING_URI": self.tracking_uri}


def default_tracking_uri(artifacts_root: Path) -> str:
    return f"sqlite:///{Path(artifacts_root) / 'mlflow.db'}"


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive file lock beside a SQLite store while it is first opened.

    Opening a store runs MLflow's schema migrations; two processes doing that at once on a fresh file
    collide (one dies with `duplicate column name`). Server-backed stores migrate under their own
    control: no lock there.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        yield
        return
    db = Path(tracking_uri[len(prefix) :].split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stage_tags(
    parent_run_id: str,
    stage: str,
    stage_hash: str,
    upstream: Mapping[str, Any],
    cached: bool,
    source_run_id: str | None,
) -> dict[str, Any]:
    """A stage run's tags: parent, stage, hash, whether it was cached, and each upstream's run and hashes."""
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "lmforge.kind": "stage",
        "lmforge.stage": stage,
        "lmforge.stage_hash": stage_hash,
        "lmforge.cached": str(cached).lower(),
        "mlflow.source.git.commit": git_commit(),
        OWNER_TAG: owner(),
    }
    if source_run_id:
        tags["lmforge.source_run_id"] = source_run_id
    for name, m in upstream.items():
        tags[f"lmforge.upstream.{name}.hash"] = m.stage_hash
        tags[f"lmforge.upstream.{name}.content_hash"] = m.content_hash
        if m.mlflow_run_id:
            tags[f"lmforge.upstream.{name}.run_id"] = m.mlflow_run_id
    return tags


class Tracker:
    """Creates the pipeline's parent run and the stages' child runs in one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: Path | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        with store_lock(tracking_uri):  # the first use of a fresh store migrates it: one process at a time
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = self._experiment(experiment, artifact_location)
            if tracking_uri.startswith("sqlite:"):
                self.client.search_registered_models(max_results=1)  # the registry store opens it too

    @classmethod
    def for_pipeline(cls, artifacts_root: Path, tracking_uri: str | None, experiment: str) -> Tracker:
        """`tracking_uri` (the runner resolves it: config, then $MLFLOW_TRACKING_URI), else the embedded
        SQLite store under the artifacts root, with its artifacts beside it. A database store named by
        the URI has no artifact root of its own (MLflow would use ./mlruns of the current folder): new
        experiments keep their artifacts under the artifacts root too; a tracking server has its own."""
        if tracking_uri:
            served = tracking_uri.split(":", 1)[0].lower() in SERVED_SCHEMES
            return cls(tracking_uri, experiment, None if served else Path(artifacts_root) / "mlruns")
        Path(artifacts_root).mkdir(parents=True, exist_ok=True)
        return cls(default_tracking_uri(artifacts_root), experiment, Path(artifacts_root) / "mlruns")

    def _experiment(self, name: str, artifact_location: Path | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(
                    name,
                    artifact_location=artifact_location.as_uri() if artifact_location else None,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except Exception:  # created concurrently by another process
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp_id

    def start_pipeline(
        self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any]
    ) -> MlflowLogger:
        all_tags = {
            "lmforge.kind": "pipeline",
            "mlflow.source.git.commit": git_commit(),
            OWNER_TAG: owner(),
            **tags,
        }
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={k: str(v) for k, v in all_tags.items() if v is not None},
        )
        logger = MlflowLogger(self.tracking_uri, run.info.run_id)
        logger.log_params(params)
        return logger

    def start_stage(
        self,
        parent_run_id: str,
        stage: str,
        stage_hash: str,
        upstream: Mapping[str, Any],
        params: Mapping[str, Any],
        cached: bool = False,
        source_run_id: str | None = None,
    ) -> MlflowLogger:
        """A nested child run for one stage, tagged with its hash and its upstream runs and hashes."""
        tags = stage_tags(parent_run_id, stage, stage_hash, upstream, cached, source_run_id)
        run = self.client.create_run(
            self.experiment_id, run_name=stage, tags={k: str(v) for k, v in tags.items() if v is not None}
        )
        logger = MlflowLogger(self.tracking_uri, run.info.run_id)
        logger.log_params(params)
        self._log_upstream_inputs(run.info.run_id, upstream)
        return logger

    def _log_upstream_inputs(self, run_id: str, upstream: Mapping[str, Any]) -> None:
        """Each upstream stage folder as an MLflow dataset input (name = stage, digest = content hash),
        so the UI's Datasets column shows what every stage was built from."""
        if not upstream:
            return
        from mlflow.data.meta_dataset import MetaDataset

        # mlflow.data makes this class (one per artifact-repository scheme) when it is imported and sets it
        # on its `sources` module, where a type checker cannot see it
        from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]
        from mlflow.entities import DatasetInput, InputTag

        inputs = [
            DatasetInput(
                # mlflow marks Dataset.profile abstract, but Dataset is no ABC and MetaDataset (which
                # leaves it out) is meant to be instantiated
                MetaDataset(  # type: ignore[abstract]
                    LocalArtifactDatasetSource(m.path), name=name, digest=m.content_hash
                )._to_mlflow_entity(),
                tags=[InputTag("mlflow.data.context", "lmforge.upstream")],
            )
            for name, m in upstream.items()
        ]
        self.client.log_inputs(run_id, datasets=inputs)

    def end(self, logger: MetricLogger, status: str = "FINISHED") -> None:
        if logger.run_id:
            self.client.set_terminated(logger.run_id, status=status)

    def end_orphaned_runs(self) -> list[str]:
        """Mark KILLED the runs of this experiment left RUNNING by a process of this host that is gone
        (a `kill -9`, a lost machine); returns their ids. Runs of live processes (a concurrent pipeline)
        and of other hosts, whose processes cannot be checked from here, are left alone."""
        ended = []
        running = self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
        )
        for run in running:
            identity = run.data.tags.get(OWNER_TAG)
            if identity is None or owner_alive(identity) is not False:
                continue
            self.client.set_tag(run.info.run_id, "lmforge.ended_by", f"{owner()} (its owner was gone)")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
        if ended:
            log.warning("marked %d run(s) KILLED: left RUNNING by a process that is gone", len(ended))
        return ended
