"""The run summary published as a Prefect markdown artifact (flows/report.py)."""

from __future__ import annotations

from flows.report import ARTIFACT_KEY, summary_markdown
from flows.runner import PipelineRun
from tasks.common.stage import StageResult
from tasks.common.testing import seal


def test_lifecycle_publishes_its_summary_artifact(prefect_harness, mlflow_uri, tmp_path):
    from prefect.artifacts import Artifact

    from conf.loader import load_config
    from flows.lifecycle import lifecycle

    sets = [
        f"artifacts_root={tmp_path}",
        f"tracking.tracking_uri={mlflow_uri}",
        "tracking.experiment=report-test",
        "collect.max_docs=20",
    ]
    run = lifecycle(load_config("smoke", overrides=sets), ["collect"])
    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None and artifact.type == "markdown" and artifact.flow_run_id is not None
    text = str(artifact.data)
    assert text == summary_markdown(run)
    assert "| collect | ran |" in text and run.results["collect"].manifest.path in text
    assert f"/#/experiments/{run.experiment_id}/runs/{run.run_id})" in text


def test_summary_links_the_registered_model_card_and_gates(tmp_path):
    evaluate = seal(
        tmp_path / "evaluate" / "e",
        "evaluate",
        metrics={"eval/judge_reward_ppo": 0.25, "eval/reward_ppo": 9.0},
    )
    export = seal(
        tmp_path / "export" / "x",
        "export",
        metrics={"export/int8/ppl_change": 0.004},
        extra={
            "registered_model_name": "lmforge-tiny",
            "registered_model_version": 3,
            "alias": "champion",
            "alias_uri": "models:/lmforge-tiny@champion",
            "quantized": {"int8": "int8"},
        },
    )
    run = PipelineRun("abc123", "sqlite:///x.db", "7")
    run.results = {"evaluate": StageResult(evaluate, "ran", 2.0), "export": StageResult(export, "ran", 1.0)}
    text = summary_markdown(run)
    assert "| eval/judge_reward_ppo | 0.25 |" in text and "eval/reward_ppo" not in text  # judged only
    assert "| export/int8/ppl_change | 0.004 |" in text
    assert "| evaluate | passed |" in text and "| export | passed |" in text
    assert "[lmforge-tiny version 3](http://127.0.0.1:5000/#/models/lmforge-tiny/versions/3)" in text
    assert "models:/lmforge-tiny@champion" in text
    assert f"({(tmp_path / 'export' / 'x' / 'model' / 'README.md').as_uri()})" in text
