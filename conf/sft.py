"""Config of the `sft` stage: supervised fine-tuning with LoRA adapters (trl + peft)."""

from __future__ import annotations

from pydantic import Field

from conf.base import TrainLoop


class SftConfig(TrainLoop):
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Module names that get LoRA adapters.",
    )
    epochs: float = Field(2.0, gt=0)
    learning_rate: float = Field(2e-3, gt=0)
