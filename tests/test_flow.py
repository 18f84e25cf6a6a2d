"""The lifecycle flow under a real Prefect server, tracked in a real MLflow store.

Runs the first stages twice (the second run must be fully cached), then changes only the dedup config
(only dedup must re-run), and checks the MLflow parent/child runs, tags, params and artifacts.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from conf.loader import load_config
from flows.lifecycle import lifecycle
from tasks.common.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

TARGET = "dedup"


@pytest.fixture(scope="module")
def runs(prefect_harness, mlflow_uri, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    sets = [
        f"artifacts_root={root}",
        f"tracking.tracking_uri={mlflow_uri}",
        "tracking.experiment=flow-test",
        "collect.max_docs=150",
    ]
    cfg = load_config("smoke", overrides=sets)
    first = lifecycle(cfg, [TARGET])
    second = lifecycle(cfg, [TARGET])
    changed_cfg = load_config("smoke", overrides=[*sets, "dedup.normalize=false"])
    third = lifecycle(changed_cfg, [TARGET])
    return first, second, third


def test_first_run_runs_every_stage(runs):
    first, _, _ = runs
    assert first.results and all(r.status == "ran" for r in first.results.values())
    assert first.results["collect"].manifest.counts["documents"] == 150
    assert first.results[TARGET].manifest.counts["documents"] <= 150


def test_second_run_is_fully_cached(runs):
    first, second, _ = runs
    assert [r.status for r in second.results.values()] == ["cached"] * len(first.results)
    for name, r in second.results.items():
        assert r.manifest == first.results[name].manifest


def test_changing_dedup_reruns_only_dedup(runs):
    first, _, third = runs
    statuses = {name: r.status for name, r in third.results.items()}
    assert statuses.pop(TARGET) == "ran"
    assert set(statuses.values()) == {"cached"}
    assert third.results[TARGET].manifest.stage_hash != first.results[TARGET].manifest.stage_hash


def test_mlflow_parent_and_child_runs(runs, mlflow_uri):
    first, second, _ = runs
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("flow-test")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    parent = client.get_run(first.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["lmforge.kind"] == "pipeline"
    assert parent.data.params["collect.max_docs"] == "150"
    # the headline figures on the parent run: the runs table compares pipeline runs by them
    dedup_counts = first.results["dedup"].manifest.counts
    assert parent.data.metrics["dedup/documents"] == dedup_counts["documents"]
    assert parent.data.metrics["collect/documents"] == 150
    assert client.get_run(second.run_id).data.metrics["dedup/documents"] == dedup_counts["documents"]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{first.run_id}'")
    by_stage = {c.data.tags["lmforge.stage"]: c for c in children}
    assert set(by_stage) == set(first.results)
    for name, child in by_stage.items():
        manifest = first.results[name].manifest
        assert child.info.status == "FINISHED"
        assert child.data.tags["lmforge.stage_hash"] == manifest.stage_hash
        assert child.data.tags["lmforge.cached"] == "false"
        assert manifest.mlflow_run_id == child.info.run_id
        assert "stage_seconds" in child.data.metrics
        assert "manifest.json" in [a.path for a in client.list_artifacts(child.info.run_id)]
    dedup_run = by_stage["dedup"]
    assert dedup_run.data.params["normalize"] == "True"
    up = first.results["dedup"].manifest
    (upstream_name,) = [k for k in up.inputs]
    assert (
        dedup_run.data.tags[f"lmforge.upstream.{upstream_name}.run_id"] == by_stage[upstream_name].info.run_id
    )
    assert dedup_run.data.metrics["count/documents"] == up.counts["documents"]
    # the upstream stage folder is the run's dataset input, named after the stage, digest = content hash
    (ds_input,) = dedup_run.inputs.dataset_inputs
    upstream_manifest = first.results[upstream_name].manifest
    assert ds_input.dataset.name == upstream_name
    assert ds_input.dataset.digest == upstream_manifest.content_hash
    assert upstream_manifest.path in ds_input.dataset.source


def test_cached_stages_link_to_the_run_that_built_them(runs, mlflow_uri):
    first, second, _ = runs
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("flow-test")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{second.run_id}'")
    assert len(children) == len(first.results)
    for child in children:
        name = child.data.tags["lmforge.stage"]
        assert child.data.tags["lmforge.cached"] == "true"
        assert child.data.tags["lmforge.source_run_id"] == first.results[name].run_id
        assert child.data.metrics["count/documents"] == first.results[name].manifest.counts["documents"]
