"""RLHF stage `ppo`: PPO on torch + transformers + peft (core math, rollouts, trainer), or trl's GRPO/RLOO."""

from tasks.ppo.stage import STAGE_VERSION, gate, ppo

__all__ = ["STAGE_VERSION", "gate", "ppo"]
