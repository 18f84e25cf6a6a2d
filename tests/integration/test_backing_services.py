"""The deployment path end to end on real services: PostgreSQL-backed Prefect and MLflow servers, the
`lmforge-process` work pool, the deployments of prefect.yaml, a worker, and `lifecycle/smoke` run by it.
Both servers are then checked through their APIs: the Prefect flow run and its task runs (one per stage),
and the MLflow parent run with one child run per stage. Then `data/tiny-dask` runs the data stages with
one task run per shard on a Dask LocalCluster, reporting to the same server."""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import urlsplit

import pytest

from flows.stages import STAGES
from tests.integration.conftest import Services, tails

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

# smoke takes ~30-60 s alone; the CPU may be shared
FLOW_RUN_TIMEOUT_S = float(os.environ.get("LMFORGE_IT_FLOW_TIMEOUT", "900"))
MAKE = ["make", "--no-print-directory", "-o", ".venv/.installed"]  # never reinstall from inside a test


async def _run_and_wait(
    api: str, deployment: str, timeout: float, logs, parameters: dict | None = None
) -> tuple:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import TERMINAL_STATES
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    with temporary_settings(updates={PREFECT_API_URL: api}):
        async with get_client() as client:
            dep = await client.read_deployment_by_name(deployment)
            flow_run = await client.create_flow_run_from_deployment(dep.id, parameters=parameters)
            deadline = time.monotonic() + timeout
            while True:
                flow_run = await client.read_flow_run(flow_run.id)
                if flow_run.state and flow_run.state.type in TERMINAL_STATES:
                    break
                if time.monotonic() > deadline:  # cancel it, so the worker stops the run's process
                    await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
                    raise TimeoutError(
                        f"{deployment} still {flow_run.state_name} after {timeout:.0f} s\n{tails(logs)}"
                    )
                await asyncio.sleep(3)
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            return dep, flow_run, task_runs


async def _shard_task_runs(api: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        async with get_client() as client:
            runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-shard-"))
            )
    return {r.name: r.state_type.value for r in runs}


def test_smoke_deployment_runs_on_postgres_backed_servers(services: Services):
    t0 = time.perf_counter()
    services.run([*MAKE, "deploy"], timeout=300)  # creates the work pool, registers every deployment
    print(f"deploy: {time.perf_counter() - t0:.1f} s")
    worker = services.start([*MAKE, "worker"], "worker.log")

    t0 = time.perf_counter()
    dep, flow_run, task_runs = asyncio.run(
        _run_and_wait(services.prefect_api, "lifecycle/smoke", FLOW_RUN_TIMEOUT_S, services.logs)
    )
    print(f"lifecycle/smoke via the worker: {time.perf_counter() - t0:.1f} s")
    assert worker.poll() is None, f"the worker exited early\n{tails(services.logs)}"

    # Prefect: the deployment on our pool; the flow run COMPLETED with one COMPLETED task run per stage.
    assert dep.work_pool_name == "lmforge-process" and dep.parameters == {"preset": "smoke"}
    assert flow_run.state.is_completed(), (
        f"flow run {flow_run.state_name}: {flow_run.state.message}\n{tails(services.logs)}"
    )
    assert flow_run.deployment_id == dep.id and "smoke" in flow_run.tags
    by_name: dict[str, list] = {}
    for tr in task_runs:
        by_name.setdefault(tr.name, []).append(tr)
    assert set(by_name) == set(STAGES), sorted(by_name)
    assert all(len(runs) == 1 and runs[0].state.is_completed() for runs in by_name.values()), {
        n: [r.state_name for r in runs] for n, runs in by_name.items()
    }

    # MLflow: one finished parent run for the smoke preset, one finished child run per stage.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(services.mlflow_uri)
    exp = client.get_experiment_by_name("lmforge")
    assert exp is not None, "no `lmforge` experiment on the MLflow server"
    parents = client.search_runs([exp.experiment_id], "tags.`lmforge.kind` = 'pipeline'")
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["lmforge.preset"] == "smoke"
    assert parent.data.tags["lmforge.stages"].split(",") == list(STAGES)
    assert parent.data.params["preset"] == "smoke"
    assert parent.data.metrics["stages_ran"] == len(STAGES)
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    stages = {r.data.tags["lmforge.stage"]: r for r in children}
    assert len(children) == len(STAGES) and set(stages) == set(STAGES)
    for name, run in stages.items():
        assert run.info.status == "FINISHED", (name, run.info.status)
        assert run.data.tags["lmforge.kind"] == "stage"
        assert parent.data.tags[f"lmforge.stage.{name}.run_id"] == run.info.run_id
        assert parent.data.tags[f"lmforge.stage.{name}.hash"] == run.data.tags["lmforge.stage_hash"]
    assert any(k.startswith("count/") for k in stages["collect"].data.metrics)
    # artifacts went through the MLflow server's proxied store, not a local path
    assert client.list_artifacts(parent.info.run_id, "pipeline"), "no pipeline/stages.json on the server"

    # The Dask deployment, its parameters edited as in the UI (smoke data, 4 shards): every shard of the
    # sharded stages is a COMPLETED task run on the PostgreSQL-backed server.
    t0 = time.perf_counter()
    overrides = ["execution.engine=dask", "execution.dask_workers=2", "collect.shard_docs=150"]
    _, data_run, _ = asyncio.run(_run_and_wait(
        services.prefect_api, "data/tiny-dask", FLOW_RUN_TIMEOUT_S, services.logs,
        parameters={"preset": "smoke", "overrides": overrides},
    ))  # fmt: skip
    seconds = time.perf_counter() - t0
    print(f"data/tiny-dask (smoke data on a 2-worker LocalCluster) via the worker: {seconds:.1f} s")
    assert data_run.state.is_completed(), (
        f"{data_run.state_name}: {data_run.state.message}\n{tails(services.logs)}"
    )
    shard_runs = asyncio.run(_shard_task_runs(services.prefect_api))
    for stage in ("filter", "dedup", "scrub"):
        assert [shard_runs.get(f"{stage}-shard-{i:05d}") for i in range(4)] == ["COMPLETED"] * 4, shard_runs

    # the generated PostgreSQL password reached the servers through the environment only
    password = urlsplit(services.env["MLFLOW_BACKEND_STORE_URI"]).password
    assert password and all(
        password not in p.read_text(errors="replace") for p in services.logs if p.exists()
    )
