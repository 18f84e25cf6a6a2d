"""Alignment stage `ppo`: PPO on torch + transformers + peft (core math, rollouts, trainer), trl's
GRPO/RLOO, or DPO (tasks/ppo/dpo.py)."""

from tasks.ppo.stage import STAGE_VERSION, gate, ppo

__all__ = ["STAGE_VERSION", "gate", "ppo"]
