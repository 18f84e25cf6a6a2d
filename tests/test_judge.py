"""judge: the independent judge reward model, trained like the reward model on disjoint pairs."""

from __future__ import annotations

import pytest

from conf.align_data import AlignDataConfig
from conf.judge import JudgeConfig
from conf.reward import RewardConfig
from conf.schema import PipelineConfig
from flows.stages import STAGES, SUBFLOWS, plan
from tasks.common.alignment import PREF_FILES, top_package
from tasks.common.artifacts import Manifest
from tasks.common.jsonl import read_jsonl
from tasks.common.models import load_tokenizer
from tasks.common.reward_model import evaluate_pairs, load_reward_model
from tasks.common.tracking import MetricLogger
from tasks.judge import gate, judge
from tasks.reward import reward
from tests.helpers import seal
from tests.test_align_data import SUMMARIES, corpus
from tests.test_align_data import run as run_align_data
from tests.tiny_models import single_thread, tiny_lm_folder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """align_data on a 16-package corpus and a tiny SFT model."""
    root = tmp_path_factory.mktemp("judge")
    _, out = run_align_data(root / "align", AlignDataConfig(eval_fraction=0.25), corpus(16))
    texts = [*SUMMARIES, "Explain what the function does.", "Return a list."]
    tiny_lm_folder(root / "sft" / "model", texts=texts)
    return {"sft": seal(root / "sft", "sft"), "align_data": seal(out, "align_data")}


SMALL = {"max_steps": 2, "batch_size": 8, "on_policy_max_new_tokens": 8, "on_policy_eval_prompts": 8}


def trained_rows(report, align: Manifest, folder) -> list[dict]:
    """Every pair a reward model trained on: its align_data pairs file and its on-policy training pairs."""
    on_policy = [r for r in read_jsonl(folder / "on_policy.jsonl") if r["split"] == "train"]
    return read_jsonl(align.file(report.extra["pairs_file"])) + on_policy


def test_judge_trains_on_pairs_disjoint_from_the_reward_models(upstream, tmp_path):
    rm = reward(RewardConfig(**SMALL), upstream, tmp_path / "reward", MetricLogger())
    jd = judge(JudgeConfig(**SMALL), upstream, tmp_path / "judge", MetricLogger())
    assert rm.extra["pairs_file"] == PREF_FILES["train"] and jd.extra["pairs_file"] == PREF_FILES["judge"]
    rm_rows = trained_rows(rm, upstream["align_data"], tmp_path / "reward")
    jd_rows = trained_rows(jd, upstream["align_data"], tmp_path / "judge")
    assert rm_rows and jd_rows and jd.counts["on_policy_train_pairs"] > 0
    assert not {r["id"] for r in rm_rows} & {r["id"] for r in jd_rows}
    assert not {top_package(r["module"]) for r in rm_rows} & {top_package(r["module"]) for r in jd_rows}
    assert jd.counts["train_pairs"] == len(jd_rows)

    # its own seed: other SFT samples for the same held-out prompts
    evals = {s: read_jsonl(tmp_path / s / "on_policy.jsonl") for s in ("reward", "judge")}
    answers = {
        s: {r["id"]: r["rejected"][0]["content"] for r in rows if r["split"] == "eval"}
        for s, rows in evals.items()
    }
    shared = answers["reward"].keys() & answers["judge"].keys()
    assert not shared or any(answers["reward"][i] != answers["judge"][i] for i in shared)

    # the output is a reward model folder, as evaluate loads it
    folder = tmp_path / "judge" / "model"
    tok = load_tokenizer(folder)
    model = load_reward_model(folder, tok)
    held_out = read_jsonl(upstream["align_data"].file(PREF_FILES["eval"]))
    again = evaluate_pairs(model, tok, held_out)
    assert set(again) >= {"accuracy", "accuracy_truncated", "accuracy_generic"}
    assert 0 <= jd.metrics["prefers_reference_over_generic"] <= 1 and "eval_accuracy_on_policy" in jd.metrics


def test_judge_is_a_stage_with_its_own_section_seed_and_gate():
    assert STAGES["judge"].inputs == ("sft", "align_data")
    order = list(STAGES)
    assert order.index("reward") < order.index("judge") < order.index("ppo")
    assert plan(["judge"])[-1] == "judge" and "judge" in SUBFLOWS["align"]
    assert isinstance(PipelineConfig().judge, JudgeConfig) and JudgeConfig().seed != RewardConfig().seed
    cfg = JudgeConfig(min_eval_accuracy=0.7)
    manifest = Manifest(
        stage="judge",
        stage_hash="x",
        stage_version=1,
        path="/tmp/x",
        config={},
        metrics={"eval_accuracy": 0.6},
    )
    message = gate(cfg, manifest)
    assert message and "judge.min_eval_accuracy=0.7" in message and "0.600" in message
    assert gate(JudgeConfig(min_eval_accuracy=0.5), manifest) is None
