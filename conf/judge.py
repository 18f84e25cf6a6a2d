"""Config of the `judge` stage: the independent judge, a reward model trained like the `reward` stage's
but on align_data's `judge` pairs (other packages, other rejected answers) with its own seed, so the
evaluation can score a policy with a model the policy never optimised against."""

from __future__ import annotations

from pydantic import Field

from conf.reward import RewardModelConfig


class JudgeConfig(RewardModelConfig):
    seed: int = Field(1, description="Seeds the score head, the data order and the SFT samples (reward: 0).")
