"""reward: learns to rank right answers above wrong ones, on-policy negatives, exact batched scoring, the
generic-answer check, output reloads, gate."""

from __future__ import annotations

import random

import pytest

from conf.reward import RewardConfig
from tasks.common import reward_model
from tasks.common.alignment import GENERIC_ANSWERS
from tasks.common.artifacts import Manifest
from tasks.common.jsonl import read_jsonl, write_jsonl
from tasks.common.models import load_tokenizer
from tasks.common.reward_model import (
    evaluate_pairs,
    load_reward_model,
    prefers_reference_over_generic,
    score_conversations,
)
from tasks.common.tracking import MetricLogger
from tasks.reward import gate, reward
from tests.helpers import seal
from tests.tiny_models import single_thread, tiny_lm_folder

VERBS = "Return Open Close Read Write Sort Count Parse Format Check Build Copy".split()
NOUNS = "list string number file path socket thread queue table buffer stream record".split()


def toy_prefs(n: int, seed: int) -> list[dict]:
    """Right answers are well-formed sentences; wrong ones are the same words shuffled, without the period."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        right = f"{rng.choice(VERBS)} the {rng.choice(NOUNS)} of the {rng.choice(NOUNS)}."
        words = right.rstrip(".").split()
        while words == right.rstrip(".").split():
            rng.shuffle(words)
        out.append(
            {
                "id": f"{seed}:{i}",
                "module": "m",
                "prompt": [{"role": "user", "content": f"What does f{i} do?"}],
                "chosen": [{"role": "assistant", "content": right}],
                "rejected": [{"role": "assistant", "content": " ".join(words)}],
                "rejected_kind": "shuffled_words",
            }
        )
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    texts = [f"{v} the {n}." for v in VERBS for n in NOUNS] + ["What does f1 do?"]
    tiny_lm_folder(root / "sft" / "model", texts=texts)
    write_jsonl(root / "align" / "prefs" / "train.jsonl", toy_prefs(96, seed=1))
    write_jsonl(root / "align" / "prefs" / "eval.jsonl", toy_prefs(32, seed=2))
    return {"sft": seal(root / "sft", "sft"), "align_data": seal(root / "align", "align_data")}


def test_reward_model_ranks_right_above_wrong_and_reloads(upstream, tmp_path):
    cfg = RewardConfig(
        epochs=2,
        batch_size=8,
        learning_rate=2e-3,
        logging_steps=4,
        max_eval_samples=16,
        on_policy_prompts=0,
        on_policy_eval_prompts=0,
    )
    report = reward(cfg, upstream, tmp_path, MetricLogger())
    m = report.metrics
    assert m["eval_accuracy"] >= 0.9 and m["eval_accuracy"] > m["eval_accuracy_before"] + 0.2
    assert m["eval_margin"] > 0.5 and m["eval_accuracy_shuffled_words"] == m["eval_accuracy"]
    assert m["train_loss_last"] < m["train_loss_first"]
    assert (
        report.counts["eval_pairs"] == 32
        and report.counts["train_pairs"] == 96
        and report.counts["steps"] == 24
    )

    tok = load_tokenizer(tmp_path / "model")
    model = load_reward_model(tmp_path / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    again = evaluate_pairs(model, tok, toy_prefs(32, seed=2))
    assert again["accuracy"] == pytest.approx(m["eval_accuracy"]) and again["margin"] == pytest.approx(
        m["eval_margin"], abs=1e-4
    )
    assert gate(cfg, _manifest(report.metrics)) is None
    assert 0 <= m["prefers_reference_over_generic"] <= 1 and read_jsonl(tmp_path / "on_policy.jsonl") == []


def test_on_policy_negatives_are_sft_answers_in_a_balanced_share(upstream, tmp_path):
    cfg = RewardConfig(max_steps=2, batch_size=8, on_policy_eval_prompts=10, on_policy_max_new_tokens=12)
    report = reward(cfg, upstream, tmp_path, MetricLogger())
    rows = read_jsonl(tmp_path / "on_policy.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    # one align_data kind with 96 pairs: as many on-policy pairs (less empty or near-copy answers)
    assert 80 <= len(train) <= 96 and len(evals) <= 10
    assert report.counts["on_policy_train_pairs"] == len(train)
    assert report.counts["train_pairs"] == 96 + len(train) and report.counts["eval_pairs"] == 32 + len(evals)
    assert {r["rejected_kind"] for r in rows} == {"on_policy"} and all(
        r["rejected"][0]["content"] for r in rows
    )
    prompts = {r["id"]: r for r in toy_prefs(96, seed=1)}
    assert all(
        r["prompt"] == prompts[r["id"]]["prompt"] and r["chosen"] == prompts[r["id"]]["chosen"] for r in train
    )
    assert "eval_accuracy_on_policy" in report.metrics and "eval_accuracy_shuffled_words" in report.metrics
    again = reward(cfg, upstream, tmp_path / "again", MetricLogger())  # seeded: the same samples
    assert read_jsonl(tmp_path / "again" / "on_policy.jsonl") == rows and again.counts == report.counts


def test_prefers_reference_over_generic_counts_prompts_won(monkeypatch):
    def by_length(model, tok, convs, batch_size=32, max_length=None):  # a reward model that likes length
        return [float(len(c[-1]["content"])) for c in convs], 0

    monkeypatch.setattr(reward_model, "score_conversations", by_length)
    longest = max(map(len, GENERIC_ANSWERS))
    prompts = [[{"role": "user", "content": "Q"}]] * 4
    refs = ["x" * (longest + 1), "y" * (longest + 5), "short", "x" * longest]
    assert prefers_reference_over_generic(None, None, prompts, refs) == 0.5  # ties do not count


def test_batched_scores_equal_one_at_a_time(upstream):
    folder = upstream["sft"].dir / "model"
    tok = load_tokenizer(folder)
    model = load_reward_model(folder, tok)
    recs = toy_prefs(6, seed=3)
    convs = [r["prompt"] + r["chosen"] for r in recs] + [
        [{"role": "user", "content": "a much longer prompt " * 5}]
    ]
    batched, _ = score_conversations(model, tok, convs, batch_size=4)
    single = [score_conversations(model, tok, [c], batch_size=1)[0][0] for c in convs]
    assert batched == pytest.approx(single, abs=1e-5)  # padding never changes a score
    lengths = [len(tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in convs]
    _, truncated = score_conversations(model, tok, convs, max_length=max(lengths[:-1]))
    assert lengths[-1] > max(lengths[:-1]) and truncated == 1  # only the long one is cut (from the left)


def _manifest(metrics: dict) -> Manifest:
    return Manifest(
        stage="reward", stage_hash="x", stage_version=1, path="/tmp/x", config={}, metrics=metrics
    )


def test_gate_fails_below_min_eval_accuracy():
    cfg = RewardConfig(min_eval_accuracy=0.7)
    message = gate(cfg, _manifest({"eval_accuracy": 0.55, "eval_accuracy_before": 0.5}))
    assert message and "reward.min_eval_accuracy=0.7" in message and "0.550" in message
    assert gate(cfg, _manifest({"eval_accuracy": 0.7})) is None
    assert "no eval_accuracy" in gate(cfg, _manifest({}))


def test_missing_eval_pairs_is_an_error(tmp_path, upstream):
    write_jsonl(tmp_path / "prefs" / "train.jsonl", toy_prefs(4, seed=1))
    write_jsonl(tmp_path / "prefs" / "eval.jsonl", [])
    inputs = {"sft": upstream["sft"], "align_data": seal(tmp_path, "align_data")}
    with pytest.raises(ValueError, match="prefs/eval.jsonl"):
        reward(RewardConfig(max_steps=1), inputs, tmp_path / "out", MetricLogger())
