"""Config of the `reward` stage: a sequence-classification reward model trained on preference pairs (trl)."""

from __future__ import annotations

from pydantic import Field

from conf.base import TrainLoop


class RewardConfig(TrainLoop):
    learning_rate: float = Field(3e-4, gt=0)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(16, gt=0, description="Preference pairs per device per step.")
    max_length: int = Field(512, ge=16, description="Pairs longer than this are left out of training.")
    center_rewards_coefficient: float | None = Field(
        0.01, ge=0, description="Pushes rewards toward mean zero (helps PPO's scale); None turns it off."
    )
    min_eval_accuracy: float = Field(
        0.6, ge=0, le=1, description="Quality gate: held-out pair accuracy must reach this."
    )
