"""Stage `judge`: the independent judge, a reward model the policy never optimised against.

Trained exactly like the `reward` stage's model (`tasks/common/reward_training.py`: SFT initialisation,
on-policy negatives, Bradley-Terry loss) but on align_data's `judge` pairs: other top-level packages
than the reward model's, rejected answers drawn with another seed, its own seed for the score head and
the SFT samples. The `evaluate` stage scores the policies with it, so a policy that learned to please
the reward model without answering better gains nothing here. Quality gate: `judge.min_eval_accuracy`.

Output: `model/` (loadable by `tasks.common.reward_model.load_reward_model`), `on_policy.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from conf.judge import JudgeConfig
from tasks.common.alignment import PREF_FILES
from tasks.common.artifacts import Manifest
from tasks.common.reward_training import accuracy_gate, train_reward_model
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

STAGE_VERSION = 1


def judge(cfg: JudgeConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    """Train the judge on the `judge` pairs (prefs/judge.jsonl)."""
    return train_reward_model(cfg, inputs, out, log_, PREF_FILES["judge"], "judge")


def gate(cfg: JudgeConfig, manifest: Manifest) -> str | None:
    """The evaluation's verdicts come from this model: one that cannot rank held-out pairs judges noise."""
    return accuracy_gate("judge", cfg.min_eval_accuracy, manifest.metrics)
