"""The Dask engine: a sharded stage's per-shard work as Prefect task runs on a Dask cluster.

With `execution.engine=dask`, each sharded stage (filter, dedup, scrub) that has to run opens a
sub-flow `<stage>-shards` on prefect-dask's `DaskTaskRunner`, with one task run `<stage>-shard-NNNNN`
per input shard; the stage then combines the shard results in the pipeline's process. The cluster is
`execution.dask_address`, or a `LocalCluster` started the first time a stage needs it and closed
with the pipeline run. Workers must import lmforge and see the artifacts root at the same path (a
shared volume on a real cluster).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from conf.execution import ExecutionConfig

if TYPE_CHECKING:
    from contextvars import ContextVar

    from distributed import LocalCluster
    from prefect.futures import PrefectFuture
    from prefect.task_runners import TaskRunner

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@task(cache_policy=NO_CACHE, task_run_name="{stage}-shard-{index:05d}", persist_result=False)
def run_shard(fn: Callable[[Any], Any], job: Any, stage: str, index: int) -> Any:
    return fn(job)


@flow(name="shards", flow_run_name="{stage}-shards", validate_parameters=False, persist_result=False)
def map_shards_flow(fn: Callable[[Any], Any], jobs: list[Any], stage: str) -> list[Any]:
    """Submit every shard to the flow's task runner; results in job order (the first failure re-raised)."""
    # Prefect ships the current task-run context with each submitted task. Here that is the stage task
    # (flows/runner.py), and unpickling it makes every fresh worker import the whole stage registry
    # (torch, transformers, trl: ~5 s). The shards need none of it: submit them as from a plain flow.
    # Prefect types the variable without None, though no context at all reads as None (its `get(None)`).
    task_run_var = cast("ContextVar[TaskRunContext | None]", TaskRunContext.__var__)
    token = task_run_var.set(None)
    try:
        futures = [run_shard.submit(fn, job, stage, i) for i, job in enumerate(jobs)]
        return [f.result() for f in futures]
    finally:
        task_run_var.reset(token)


@dataclass(frozen=True)
class DaskShardMap:
    """A `ShardMap` (tasks/common/shards.py) that runs each job as a Prefect task run on a Dask cluster."""

    stage: str
    address: str

    def __call__(self, fn: Callable[[T], R], jobs: list[T]) -> list[R]:
        from prefect_dask.task_runners import DaskTaskRunner

        # DaskTaskRunner subclasses a bare `TaskRunner` (whose future type then defaults to Prefect's
        # thread-pool future), and TaskRunner is invariant in it: widen it as Prefect's own Flow does.
        runner = cast("TaskRunner[PrefectFuture[Any]]", DaskTaskRunner(address=self.address))
        return map_shards_flow.with_options(task_runner=runner)(fn, list(jobs), self.stage)


class ShardCluster:
    """The Dask cluster of one pipeline run, started on first use (a fully cached run never starts one)."""

    def __init__(self, cfg: ExecutionConfig):
        self.cfg = cfg
        self._cluster: LocalCluster | None = None

    def address(self) -> str | None:
        """The scheduler address for the sharded stages, or None to run them in-process."""
        if self.cfg.engine == "local":
            return None
        try:
            import distributed  # noqa: F401
            import prefect_dask  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                f"execution.engine=dask needs prefect-dask and distributed ({e}): pip install -e '.[scale]'"
            ) from e
        if self.cfg.dask_address:
            return self.cfg.dask_address
        if self._cluster is None:
            self._cluster = self._start_local()
        return self._cluster.scheduler_address

    def _start_local(self) -> LocalCluster:
        from distributed import LocalCluster

        # Task runs on the workers report to this run's Prefect API; without the URL each worker
        # process would start a temporary server of its own and the UI would never see the shards.
        env = {"PREFECT_API_URL": api_url} if (api_url := _prefect_api_url()) else {}
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=self.cfg.dask_workers,
            threads_per_worker=self.cfg.dask_threads_per_worker,
            processes=True,
            host="127.0.0.1",
            # loopback unless configured; port 0 (the default) is a free one: never "8787 is already in use"
            dashboard_address=self.cfg.dask_dashboard_address,
            env=env,
        )
        log.info(
            "started a Dask LocalCluster (%d workers) at %s, dashboard %s",
            self.cfg.dask_workers,
            cluster.scheduler_address,
            cluster.dashboard_link,
        )
        return cluster

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> ShardCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prefect_api_url() -> str | None:
    """The API this process reports to: a configured server, or the temporary one Prefect started."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or str(get_client().api_url)
