"""The whole lifecycle on the `smoke` preset, under a real Prefect server and a real MLflow store.

Asserts what a user checks in the MLflow UI: every stage's child run with its metrics, a model card
whose numbers are the logged ones, a registered model version that loads, and a fully cached rerun.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conf.loader import load_config
from flows.lifecycle import lifecycle
from flows.stages import STAGES
from tasks import export as model_card

EXPERIMENT = "pipeline-test"


@pytest.fixture(scope="module")
def pipeline(prefect_harness, mlflow_uri, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline-artifacts")
    cfg = load_config(
        "smoke",
        overrides=[
            f"artifacts_root={root}",
            f"tracking.tracking_uri={mlflow_uri}",
            f"tracking.experiment={EXPERIMENT}",
        ],
    )
    first = lifecycle(cfg)
    second = lifecycle(cfg)
    return cfg, first, second


def test_every_stage_ran_and_has_its_child_run(pipeline, mlflow_uri):
    _, first, _ = pipeline
    assert list(first.results) == list(STAGES)
    assert all(r.status == "ran" for r in first.results.values())
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{first.run_id}'")
    by_stage = {c.data.tags["lmforge.stage"]: c for c in children}
    assert set(by_stage) == set(STAGES)
    for name, child in by_stage.items():
        assert child.info.status == "FINISHED", name
        assert "stage_seconds" in child.data.metrics, name
        manifest = first.results[name].manifest
        for metric, value in manifest.metrics.items():
            assert child.data.metrics[metric] == pytest.approx(value), (name, metric)
    pre = by_stage["pretrain"]
    history = client.get_metric_history(pre.info.run_id, "loss")
    assert len(history) > 3 and history[-1].value < history[0].value  # the curve is there and falls


HEADLINE = (
    "eval/judge_win_rate_ppo_vs_sft",
    "eval/judge_win_rate_ppo_vs_sft_ci_low",
    "eval/judge_reward_ppo",
    "eval/rouge_l_constant",
    "eval/distinct_ppo",
    "pretrain/final/val_loss",
    "reward/eval_accuracy",
    "judge/eval_accuracy",
    "dedup/documents",
    "scrub/pii_total",
)


def test_parent_runs_carry_the_headline_figures(pipeline, mlflow_uri):
    """The first run's parent and the fully cached second run's parent show the same figures."""
    _, first, second = pipeline
    client = MlflowClient(mlflow_uri)
    evaluate = first.results["evaluate"].manifest.metrics
    for run in (first, second):
        metrics = client.get_run(run.run_id).data.metrics
        assert set(HEADLINE) <= set(metrics), set(HEADLINE) - set(metrics)
        assert {k: v for k, v in metrics.items() if k.startswith("eval/")} == pytest.approx(evaluate)
        assert metrics["scrub/pii_total"] == first.results["scrub"].manifest.counts["pii_total"]


def test_model_card_numbers_equal_logged_metrics(pipeline, mlflow_uri):
    _, first, _ = pipeline
    export = first.results["export"].manifest
    card = (Path(export.path) / "model" / "README.md").read_text()
    for title in model_card.SECTIONS:
        assert f"\n## {title}\n" in card, title
    evaluate = first.results["evaluate"].manifest
    logged = MlflowClient(mlflow_uri).get_run(evaluate.mlflow_run_id).data.metrics
    rows = dict(re.findall(r"^\| (eval/\S+) \| (\S+) \|", card, flags=re.M))
    for name in (
        "eval/ppl_base",
        "eval/ppl_sft",
        "eval/ppl_ppo",
        "eval/rouge_l_sft",
        "eval/rouge_l_ppo",
        "eval/rm_accuracy",
        "eval/reward_sft",
        "eval/reward_ppo",
        "eval/win_rate_ppo_vs_sft",
        "eval/kl_ppo_sft",
        "eval/judge_win_rate_ppo_vs_sft",
        "eval/judge_reward_ppo",
        "eval/rouge_l_constant",
        "eval/token_f1_ppo",
        "eval/distinct_ppo",
    ):
        assert float(rows[name]) == pytest.approx(logged[name], rel=1e-5), name
    for stage, result in first.results.items():
        if stage != "export":
            assert result.manifest.stage_hash in card, stage  # lineage names every stage's artifact hash
    assert "| prompt | reference | SFT | PPO |" in card
    assert "eval/win_rate_ppo_vs_sft" not in card.split("\n---\n")[0]  # self-judged: not in model-index


def test_registered_model_version_exists_and_loads(pipeline, mlflow_uri, tmp_path):
    from transformers import AutoModelForCausalLM

    _, first, _ = pipeline
    extra = first.results["export"].manifest.extra
    client = MlflowClient(mlflow_uri)
    version = client.get_model_version(extra["registered_model_name"], str(extra["registered_model_version"]))
    assert version.tags["lmforge.ppo.stage_hash"] == first.results["ppo"].manifest.stage_hash
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(version.name, version.version),
        dst_path=str(tmp_path),
        tracking_uri=mlflow_uri,
    )
    model = AutoModelForCausalLM.from_pretrained(local)
    assert model.config.vocab_size > 0


def test_second_run_is_fully_cached(pipeline):
    _, first, second = pipeline
    assert {r.status for r in second.results.values()} == {"cached"}
    assert {n: r.manifest.stage_hash for n, r in second.results.items()} == {
        n: r.manifest.stage_hash for n, r in first.results.items()
    }
