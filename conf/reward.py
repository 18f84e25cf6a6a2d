"""Config of the `reward` stage: a sequence-classification reward model trained on preference pairs (trl).

`RewardModelConfig` holds what the `reward` stage and the `judge` stage (`conf/judge.py`) share: both
train a reward model the same way (`tasks/common/reward_training.py`), on disjoint pairs.
"""

from __future__ import annotations

from pydantic import Field

from conf.base import TrainLoop


class RewardModelConfig(TrainLoop):
    """How a reward model is trained: the loop, its on-policy negatives, its quality gate."""

    learning_rate: float = Field(3e-4, gt=0)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(16, gt=0, description="Preference pairs per device per step.")
    max_length: int = Field(512, ge=16, description="Pairs longer than this are left out of training.")
    center_rewards_coefficient: float | None = Field(
        0.01, ge=0, description="Pushes rewards toward mean zero (helps PPO's scale); None turns it off."
    )
    on_policy_prompts: int | None = Field(
        None,
        ge=0,
        description="Training prompts the SFT model answers, its answers added as rejected (kind "
        "`on_policy`) against the reference; None: as many as the average align_data kind has pairs "
        "(balanced kinds); 0: none.",
    )
    on_policy_eval_prompts: int | None = Field(
        None,
        ge=0,
        description="Held-out prompts answered the same way, for eval_accuracy_on_policy; None: all.",
    )
    on_policy_max_new_tokens: int = Field(
        48, gt=0, description="Longest SFT answer sampled (as long as the evaluate stage's answers)."
    )
    on_policy_temperature: float = Field(1.0, gt=0, description="Sampling temperature of the SFT answers.")
    on_policy_batch_size: int = Field(32, gt=0, description="Prompts per generation batch.")
    min_eval_accuracy: float = Field(
        0.6, ge=0, le=1, description="Quality gate: held-out pair accuracy must reach this."
    )


class RewardConfig(RewardModelConfig):
    """The policy's reward model: PPO optimises against it (trained on align_data's `rm` pairs)."""
