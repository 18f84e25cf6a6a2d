"""Stage `reward`: the policy's reward model, trained on align_data's `rm` preference pairs.

A sequence-classification model initialised from the SFT model, trained with trl's `RewardTrainer`
(Bradley-Terry loss) on the `rm` pairs plus on-policy negatives (the SFT model's own answers, rejected
against the reference); the training is shared with the `judge` stage (`tasks/common/reward_training.py`).
Metrics: held-out accuracy overall (`eval_accuracy`) and per rejected kind (`eval_accuracy_<kind>`),
and `prefers_reference_over_generic`. Quality gate: `reward.min_eval_accuracy`.

Output: `model/` (the sequence-classification model + tokenizer, pad id set), what PPO optimises
against; `on_policy.jsonl` (the SFT answers used as rejected).
"""

from __future__ import annotations

from pathlib import Path

from conf.reward import RewardConfig
from tasks.common.alignment import PREF_FILES
from tasks.common.artifacts import Manifest
from tasks.common.reward_training import accuracy_gate, train_reward_model
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

STAGE_VERSION = 2


def reward(cfg: RewardConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    """Train the policy's reward model on the `rm` pairs (prefs/train.jsonl)."""
    return train_reward_model(cfg, inputs, out, log_, PREF_FILES["train"], "reward")


def gate(cfg: RewardConfig, manifest: Manifest) -> str | None:
    """PPO optimises against this model: one that cannot rank held-out pairs would teach it noise."""
    return accuracy_gate("reward", cfg.min_eval_accuracy, manifest.metrics)
