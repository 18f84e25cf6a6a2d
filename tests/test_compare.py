"""`align-compare` (flows/compare.py): the comparison table, plot and metrics built from evaluate manifests,
logged on a real MLflow run; the per-algorithm configs; and (slow) the whole flow on the smoke preset."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from conf.loader import ConfigError, load_config
from flows.compare import (
    ALGORITHMS,
    COLUMNS,
    CONSTANT_ROW,
    SFT_ROW,
    AlgorithmResult,
    algorithm_configs,
    comparison_metrics,
    comparison_plot,
    comparison_rows,
    log_comparison,
    present_columns,
    table_markdown,
)
from tasks.common.tracking import Tracker


def fake_metrics(win: float, judge: bool = True) -> dict[str, float]:
    """An evaluate manifest's metrics: the SFT/constant figures are the same for every algorithm."""
    m = {
        "eval/rouge_l_ppo": 0.1 + win / 10,
        "eval/rouge_l_sft": 0.12,
        "eval/rouge_l_constant": 0.15,
        "eval/distinct_ppo": win,
        "eval/distinct_sft": 0.9,
        "eval/kl_ppo_sft": 3 * win,
        "eval/ppl_ppo": 200 + win,
        "eval/ppl_sft": 190.0,
        "eval/win_rate_ppo_vs_sft": 0.9,
    }
    if judge:
        m.update(
            {
                "eval/judge_win_rate_ppo_vs_sft": win,
                "eval/judge_win_rate_ppo_vs_sft_ci_low": win - 0.05,
                "eval/judge_win_rate_ppo_vs_sft_ci_high": win + 0.05,
                "eval/judge_reward_ppo": win - 0.5,
                "eval/judge_reward_sft": -0.1,
                "eval/judge_reward_constant": -0.4,
            }
        )
    return m


def fake_results(judge: bool = True) -> dict[str, AlgorithmResult]:
    return {
        "ppo": AlgorithmResult("ppo", "r1", metrics=fake_metrics(0.6, judge), align_seconds=90.0),
        "grpo": AlgorithmResult("grpo", "r2", metrics=fake_metrics(0.4, judge), align_seconds=120.0),
        "rloo": AlgorithmResult("rloo", "r3", error="QualityGateError: quality gate 'ppo' failed:\n a | b"),
        "dpo": AlgorithmResult("dpo", "r4", metrics=fake_metrics(0.55, judge), align_seconds=30.0),
    }


def test_rows_hold_each_algorithm_with_intervals_then_sft_and_constant_references():
    rows = comparison_rows(fake_results())
    assert [r["algorithm"] for r in rows] == ["ppo", "grpo", "rloo", "dpo", SFT_ROW, CONSTANT_ROW]
    ppo, _, rloo, dpo, sft, constant = rows
    assert ppo["status"] == "ok" and ppo["eval/judge_win_rate_ppo_vs_sft"] == 0.6
    assert ppo["eval/judge_win_rate_ppo_vs_sft_ci_low"] == pytest.approx(0.55)
    assert ppo["align_seconds"] == 90.0
    assert dpo["eval/judge_reward_ppo"] == pytest.approx(0.05)
    assert rloo["status"].startswith("failed: QualityGateError") and rloo["eval/rouge_l_ppo"] is None
    assert (
        sft["eval/judge_reward_ppo"] == -0.1
        and sft["eval/rouge_l_ppo"] == 0.12
        and sft["eval/ppl_ppo"] == 190
    )
    assert sft["eval/judge_win_rate_ppo_vs_sft"] is None  # SFT has no win rate against itself
    assert constant["eval/rouge_l_ppo"] == 0.15 and constant["eval/distinct_ppo"] is None


def test_columns_follow_what_evaluate_reports():
    """Before evaluate reports the judge, its columns are left out rather than shown empty."""
    headers = [c.header for c in present_columns(fake_results(judge=False))]
    assert "judge win rate vs SFT" not in headers and "judge reward" not in headers
    assert {"ROUGE-L", "distinct", "KL to SFT", "ppl", "RM win rate (self-judged)"} <= set(headers)
    assert len(present_columns(fake_results())) == len(COLUMNS) - 1  # no token F1 in the fakes


def test_markdown_table_shows_intervals_failures_and_which_judge():
    results = fake_results()
    text = table_markdown(comparison_rows(results), present_columns(results))
    lines = text.splitlines()
    assert lines[0].startswith("| algorithm | judge win rate vs SFT | judge reward | ROUGE-L |")
    ppo = next(line for line in lines if line.startswith("| ppo |"))
    assert "0.6 [0.55, 0.65]" in ppo and ppo.endswith("| ok |")
    rloo = next(line for line in lines if line.startswith("| rloo |"))
    assert "failed: QualityGateError" in rloo and "| - |" in rloo and rloo.endswith("failed: a / b |")
    assert "independent judge" in text and "self-judged" in text


def test_metrics_are_named_per_algorithm_from_evaluate_names():
    metrics = comparison_metrics(fake_results())
    assert metrics["compare/ppo/judge_win_rate_ppo_vs_sft"] == 0.6
    assert metrics["compare/dpo/rouge_l_ppo"] == pytest.approx(0.155)
    assert metrics["compare/grpo/align_seconds"] == 120.0
    assert not any(k.startswith("compare/rloo/") for k in metrics)  # a failed run reports nothing
    assert all(math.isfinite(v) for v in metrics.values())


def test_plot_has_one_panel_per_figure():
    results = fake_results()
    columns = present_columns(results)
    fig = comparison_plot(comparison_rows(results), columns)
    assert [ax.get_title() for ax in fig.axes] == [c.header for c in columns]
    win = fig.axes[0]
    assert [t.get_text() for t in win.get_xticklabels()] == ["ppo", "grpo", "rloo", "dpo"]


def test_comparison_lands_on_the_parent_mlflow_run(mlflow_uri):
    tracker = Tracker(mlflow_uri, "compare-test")
    parent = tracker.start_pipeline(
        "compare", params={"preset": "test"}, tags={"lmforge.kind": "align-compare"}
    )
    rows = log_comparison(parent, fake_results())
    tracker.end(parent)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(parent.run_id)
    assert run.data.metrics["compare/ppo/judge_win_rate_ppo_vs_sft"] == 0.6
    assert run.data.metrics["compare/dpo/kl_ppo_sft"] == pytest.approx(1.65)
    assert run.data.tags["lmforge.compare.dpo.run_id"] == "r4"
    assert run.data.tags["lmforge.compare.failed"] == "rloo"
    artifacts = {a.path for a in client.list_artifacts(parent.run_id, "compare")}
    assert {"compare/table.md", "compare/table.json", "compare/comparison.png"} <= artifacts
    assert len(rows) == 6


def test_algorithm_configs_set_the_algorithm_and_validate_each():
    cfg = load_config("smoke")
    configs = algorithm_configs(cfg, list(ALGORITHMS))
    assert {a: c.ppo.algorithm for a, c in configs.items()} == {a: a for a in ALGORITHMS}
    assert all(
        c.ppo.model_dump(exclude={"algorithm"}) == cfg.ppo.model_dump(exclude={"algorithm"})
        for c in configs.values()
    )
    with pytest.raises(ConfigError, match="unknown algorithm"):
        algorithm_configs(cfg, ["ppo", "a2c"])
    odd = load_config("smoke", overrides=["ppo.batch_size=6", "ppo.mini_batch_size=2"])
    algorithm_configs(odd, ["ppo", "dpo"])  # no generations per prompt: fine
    with pytest.raises(ConfigError, match=r"(?s)ppo.algorithm=grpo.*num_generations"):
        algorithm_configs(odd, ["ppo", "grpo"])


def test_upstream_of_ppo_is_shared_by_every_algorithm():
    """The premise of the comparison: only ppo and what follows it re-key when the algorithm changes."""
    from flows.stages import STAGES, plan

    configs = algorithm_configs(load_config("smoke"), list(ALGORITHMS))
    for name in plan(["evaluate"]):
        keyed = {a: STAGES[name].keyed_config(c) for a, c in configs.items()}
        same = all(k == keyed["ppo"] for k in keyed.values())
        assert same == (name != "ppo"), name  # evaluate differs through its ppo input's content hash


@pytest.mark.slow
def test_align_compare_on_the_smoke_preset(prefect_harness, mlflow_uri, tmp_path):
    """Every algorithm (DPO included) through evaluate on the smoke preset, upstream built once."""
    from flows.compare import align_compare

    cfg = load_config(
        "smoke",
        overrides=[
            f"artifacts_root={tmp_path}",
            f"tracking.tracking_uri={mlflow_uri}",
            "tracking.experiment=align-compare-test",
        ],
    )
    comparison = align_compare(cfg)
    assert not comparison.failed, {a: r.error for a, r in comparison.results.items()}
    assert list(comparison.results) == list(ALGORITHMS)
    for algorithm, result in comparison.results.items():
        assert "eval/rouge_l_ppo" in result.metrics, algorithm
    assert len({p.name for p in (tmp_path / "ppo").iterdir() if p.is_dir()}) == 4
    assert len([p for p in (tmp_path / "sft").iterdir() if p.is_dir()]) == 1  # built once, shared
    client = MlflowClient(mlflow_uri)
    run = client.get_run(comparison.run_id)
    assert "compare/dpo/kl_ppo_sft" in run.data.metrics
    children = client.search_runs(
        [comparison.experiment_id], f"tags.mlflow.parentRunId = '{comparison.run_id}'"
    )
    assert sorted(c.data.tags["lmforge.compare.algorithm"] for c in children) == sorted(ALGORITHMS)
