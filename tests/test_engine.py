"""The Dask engine: data stages fanned out per shard as Prefect task runs on a real 2-worker LocalCluster.

The same stages run in-process (LSH index in memory) into one artifacts root and on the cluster (LSH
index in a real password-protected redis-server) into another; every stage folder must come out
byte-identical (same content hash), and the Prefect server must hold one completed task run per shard.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from functools import partial
from pathlib import Path

import pytest
from prefect import flow

from conf.execution import ExecutionConfig
from conf.filter import FilterConfig
from conf.loader import load_config
from flows.engine import DaskShardMap, ShardCluster
from flows.lifecycle import lifecycle
from tasks.common.data import Document
from tasks.common.tracking import MetricLogger
from tasks.filter import filter_documents
from tests.helpers import documents_stage
from tests.services import redis_server

DATA_STAGES = ["collect", "filter", "dedup", "scrub"]
SHARDS = 4  # 600 smoke documents, 150 per collect shard


@pytest.fixture(scope="module")
def runs(prefect_harness, mlflow_uri, tmp_path_factory):
    """The data stages in-process (LSH index in memory), then on the cluster with the LSH index in a real
    password-protected redis-server: the scale-out path a team would use."""

    def run(engine: str, *extra: str):
        root = tmp_path_factory.mktemp(f"artifacts-{engine}")
        cfg = load_config("smoke", overrides=[
            f"artifacts_root={root}", f"tracking.tracking_uri={mlflow_uri}",
            "tracking.experiment=engine-test",
            "collect.shard_docs=150", f"execution.engine={engine}", "execution.dask_workers=2", *extra,
        ])  # fmt: skip
        return lifecycle(cfg, ["scrub"])

    local = run("local")
    with redis_server(tmp_path_factory.mktemp("redis"), password="engine-test-pw") as port:
        os.environ["LMFORGE_TEST_REDIS_PW"] = "engine-test-pw"
        try:
            dask = run(
                "dask",
                "dedup.lsh_storage.type=redis",
                "dedup.lsh_storage.host=127.0.0.1",
                f"dedup.lsh_storage.port={port}",
                "dedup.lsh_storage.password_env=LMFORGE_TEST_REDIS_PW",
            )
        finally:
            del os.environ["LMFORGE_TEST_REDIS_PW"]
    return local, dask


def test_cluster_run_equals_the_in_process_run(runs):
    local, dask = runs
    assert list(dask.results) == DATA_STAGES
    for name in DATA_STAGES:
        a, b = local.results[name].manifest, dask.results[name].manifest
        assert b.stage_hash == a.stage_hash, name
        assert b.content_hash == a.content_hash, f"{name}: the cluster wrote different files"
        assert b.files == a.files, name
        assert b.counts == a.counts, name
    assert dask.results["scrub"].manifest.counts["documents"] > 500
    storages = [r.results["dedup"].manifest.extra["lsh_storage"] for r in runs]
    assert storages == ["dict", "redis"]  # the same output, whichever engine and index


def test_outputs_keep_one_shard_per_input_shard(runs):
    _, dask = runs
    for name in ("filter", "dedup", "scrub"):
        shards = [f for f in dask.results[name].manifest.files if f.startswith("documents/")]
        assert shards == [f"documents/shard-{i:05d}.jsonl" for i in range(SHARDS)], name
        assert not any(f.startswith("_parts/") for f in dask.results[name].manifest.files)


def test_every_shard_is_a_completed_prefect_task_run(runs):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        TaskRunFilter,
        TaskRunFilterName,
    )

    async def names_by_state():
        async with get_client() as client:
            task_runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-shard-")), limit=200
            )
            flow_runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="-shards")), limit=200
            )
        return {t.name: t.state_type.value for t in task_runs}, [f.name for f in flow_runs]

    task_runs, flow_runs = asyncio.run(names_by_state())
    for stage in ("filter", "dedup", "scrub"):
        assert f"{stage}-shards" in flow_runs
        for i in range(SHARDS):
            assert task_runs.get(f"{stage}-shard-{i:05d}") == "COMPLETED", (stage, i)
    assert not any(name.startswith("collect-shard") for name in task_runs)  # collect is not sharded


def test_a_corrupt_shard_fails_the_stage_naming_file_and_line(prefect_harness, tmp_path):
    docs = [Document(f"d{i}", f"plain words number {i} " * 20, "t") for i in range(6)]
    upstream = documents_stage(tmp_path, docs, shard_docs=2)
    bad = sorted(upstream.files_under("documents/"))[1]
    bad.write_text(bad.read_text() + "{not json\n")

    @flow
    def filter_on_cluster():
        with ShardCluster(ExecutionConfig(engine="dask")) as cluster:
            mapper = DaskShardMap("filter", cluster.address())
            return filter_documents(
                FilterConfig(), {"collect": upstream}, tmp_path / "out", MetricLogger(), mapper
            )

    with pytest.raises(ValueError, match=rf"{bad.name}:3: not a document record"):
        filter_on_cluster()


def die_once_on_shard_1(marker_dir: str, job: int) -> int:
    """A shard job whose worker process is SIGKILLed the first time it runs shard 1."""
    marker = Path(marker_dir) / "killed"
    if job == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return job * 10


def test_a_killed_worker_is_replaced_and_its_shard_rerun(prefect_harness, tmp_path):
    @flow
    def map_with_a_kill():
        with ShardCluster(ExecutionConfig(engine="dask")) as cluster:
            return DaskShardMap("kill", cluster.address())(
                partial(die_once_on_shard_1, str(tmp_path)), [0, 1, 2, 3]
            )

    assert map_with_a_kill() == [0, 10, 20, 30]
    assert int((tmp_path / "killed").read_text()) != os.getpid()  # it was a worker that died


def test_the_engine_is_not_part_of_any_stage_hash():
    local = load_config("smoke")
    dask = load_config(
        "smoke", overrides=["execution.engine=dask", "execution.dask_address=tcp://10.0.0.1:8786"]
    )
    from flows.stages import STAGES

    for spec in STAGES.values():
        assert spec.hash_for(local, {}) == spec.hash_for(dask, {}), spec.name
    assert json.dumps(dask.model_dump(mode="json")["execution"])  # logged with the run's params
