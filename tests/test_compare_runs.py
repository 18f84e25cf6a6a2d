"""Comparing pipeline runs the way the MLflow UI's runs table does: through `mlflow.search_runs`.

Two smoke runs up to `scrub` differ only in `dedup.threshold`; both parent runs must carry the headline
figures (data counts here: documents after dedup, pii_total) and the differing parameter, and a fully
cached re-run must carry the same figures. The evaluate/training figures are checked on a parent run
logged from hand-made manifests (a whole pipeline is `tests/test_pipeline.py`'s job).
"""

from __future__ import annotations

import dataclasses

import mlflow
import pytest

from conf.loader import load_config
from flows.lifecycle import lifecycle
from flows.runner import PipelineRun, _log_summary, parent_figures
from flows.stages import STAGES
from tasks.common.stage import StageResult
from tasks.common.tracking import Tracker
from tests.helpers import seal

EXPERIMENT = "compare-runs-test"
THRESHOLDS = ("0.7", "0.8")
DATA_FIGURES = ("collect/documents", "filter/documents", "dedup/documents", "scrub/pii_total")


@pytest.fixture(scope="module")
def sets(tmp_path_factory, mlflow_uri):
    return [
        f"artifacts_root={tmp_path_factory.mktemp('compare-runs')}",
        f"tracking.tracking_uri={mlflow_uri}",
        f"tracking.experiment={EXPERIMENT}",
        "collect.max_docs=150",
    ]


@pytest.fixture(scope="module")
def runs(prefect_harness, sets):
    configs = {t: load_config("smoke", overrides=[*sets, f"dedup.threshold={t}"]) for t in THRESHOLDS}
    first = {t: lifecycle(cfg, ["scrub"]) for t, cfg in configs.items()}
    cached = lifecycle(configs[THRESHOLDS[0]], ["scrub"])
    return first, cached


@pytest.fixture
def search(mlflow_uri, monkeypatch):
    """`mlflow.search_runs` (the fluent API the UI's table mirrors) against the test store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    return lambda experiment, query: mlflow.search_runs(experiment_names=[experiment], filter_string=query)


def test_both_parent_runs_show_the_figures_and_the_differing_parameter(runs, search):
    first, cached = runs
    table = search(EXPERIMENT, "tags.`lmforge.kind` = 'pipeline'")
    table = table.set_index("run_id")
    ids = {t: first[t].run_id for t in THRESHOLDS}
    assert set(ids.values()) | {cached.run_id} <= set(table.index)
    assert [table.loc[ids[t], "params.dedup.threshold"] for t in THRESHOLDS] == list(THRESHOLDS)
    for t in THRESHOLDS:
        row = table.loc[ids[t]]
        manifests = first[t].manifests()
        assert row["metrics.dedup/documents"] == manifests["dedup"].counts["documents"]
        assert row["metrics.scrub/pii_total"] == manifests["scrub"].counts["pii_total"]
        for name in DATA_FIGURES:
            assert row[f"metrics.{name}"] == first[t].figures[name], name
        assert row["metrics.stages_ran"] >= 1


def test_a_cached_rerun_carries_the_same_figures(runs, search):
    first, cached = runs
    assert {r.status for r in cached.results.values()} == {"cached"}
    table = search(EXPERIMENT, f"attributes.run_id = '{cached.run_id}'")
    (row,) = table.to_dict("records")
    for name in DATA_FIGURES:
        assert row[f"metrics.{name}"] == first[THRESHOLDS[0]].figures[name], name
    assert row["params.dedup.threshold"] == THRESHOLDS[0]


def test_runs_can_be_filtered_and_ordered_by_a_figure(runs, search):
    """What the runs table's filter box and column sort do."""
    first, _ = runs
    table = search(EXPERIMENT, "params.`dedup.threshold` = '0.8' and tags.`lmforge.kind` = 'pipeline'")
    assert set(table["run_id"]) == {first["0.8"].run_id}
    assert (table["metrics.dedup/documents"] >= 1).all()


def test_a_gate_failure_still_shows_the_figures(runs, sets, search, monkeypatch):
    """A stage whose folder is finished but whose gate fails (here: a cached dedup folder re-checked by
    a gate that now refuses it) still gives the parent run its figures, tagged with the failed gate."""
    first, _ = runs
    refuse = dataclasses.replace(STAGES["dedup"], gate=lambda cfg, manifest: "refused by the test")
    monkeypatch.setitem(STAGES, "dedup", refuse)
    with pytest.raises(Exception, match="refused by the test"):
        lifecycle(load_config("smoke", overrides=[*sets, f"dedup.threshold={THRESHOLDS[0]}"]), ["dedup"])
    table = search(EXPERIMENT, "tags.`lmforge.gate_failed` = 'dedup'")
    (row,) = table.to_dict("records")
    assert row["status"] == "FAILED"
    assert row["metrics.dedup/documents"] == first[THRESHOLDS[0]].figures["dedup/documents"]
    assert row["metrics.filter/documents"] == first[THRESHOLDS[0]].figures["filter/documents"]


def result(stage: str, tmp_path, counts=None, metrics=None) -> StageResult:
    manifest = seal(tmp_path / stage, stage, counts=counts or {}, metrics=metrics or {})
    return StageResult(manifest, "cached", 0.1)


def test_parent_run_carries_evaluation_training_and_data_figures(tmp_path, mlflow_uri, search):
    """Judge results and every eval/* metric under their own names; final validation loss, reward-model
    accuracy (per rejected kind too) and data counts as `<stage>/<key>`; nothing else."""
    results = {
        "dedup": result("dedup", tmp_path, {"documents": 1674, "clusters": 27}, {"docs_per_second": 4e3}),
        "scrub": result("scrub", tmp_path, {"pii_total": 44, "pii_IBAN_CODE": 0}),
        "pretrain": result("pretrain", tmp_path, {"steps": 300}, {"final/val_loss": 5.1, "final/mfu": 0.2}),
        "reward": result("reward", tmp_path, metrics={"eval_accuracy": 0.8, "eval_accuracy_generic": 0.9}),
        "judge": result("judge", tmp_path, metrics={"eval_accuracy": 0.77}),
        "evaluate": result(
            "evaluate",
            tmp_path,
            {"eval_prompts": 200},
            {"eval/judge_win_rate_ppo_vs_sft": 0.56, "eval/judge_win_rate_ppo_vs_sft_ci_low": 0.5},
        ),
        "export": result(
            "export",
            tmp_path,
            {"weight_bytes": 5513688},
            {"export/gguf_q8_0/ppl_change": -0.0003, "export/gguf_q8_0/tokens_per_s": 368.1},
        ),
    }
    figures = parent_figures(results)
    assert figures == {
        "dedup/documents": 1674.0,
        "scrub/pii_total": 44.0,
        "pretrain/final/val_loss": 5.1,
        "reward/eval_accuracy": 0.8,
        "reward/eval_accuracy_generic": 0.9,
        "judge/eval_accuracy": 0.77,
        "eval/judge_win_rate_ppo_vs_sft": 0.56,
        "eval/judge_win_rate_ppo_vs_sft_ci_low": 0.5,
        "export/gguf_q8_0/ppl_change": -0.0003,
    }
    tracker = Tracker(mlflow_uri, "parent-figures-test")
    parent = tracker.start_pipeline("figures", params={"dedup": {"threshold": 0.8}}, tags={})
    _log_summary(parent, PipelineRun(parent.run_id, mlflow_uri, results=results))
    tracker.end(parent)
    (row,) = search("parent-figures-test", "").to_dict("records")
    for name, value in figures.items():
        assert row[f"metrics.{name}"] == pytest.approx(value), name
    assert row["params.dedup.threshold"] == "0.8"
