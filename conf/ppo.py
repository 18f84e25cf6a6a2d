"""Config of the `ppo` stage: RLHF of the SFT policy against the reward model (PPO, or trl's GRPO/RLOO)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from conf.base import StageConfig


class PpoConfig(StageConfig):
    algorithm: Literal["ppo", "grpo", "rloo"] = Field(
        "ppo",
        description="ppo: our RLHF-PPO (value model, GAE, KL-shaped reward); grpo/rloo: trl's trainers.",
    )
    seed: int = 0
    max_train_prompts: int | None = Field(None, ge=1, description="Use at most this many training prompts.")
    max_prompt_tokens: int = Field(96, ge=4, description="Prompts longer than this (in tokens) are skipped.")

    # The policy's fresh LoRA adapter on top of the merged SFT model.
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Keep 0 so rollout and update log-probs agree.")
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"

    # Optimisation. Batch sizes are global (split over processes); a step is one rollout batch, used for
    # `ppo_epochs` passes of batch_size / mini_batch_size optimizer steps (GRPO/RLOO: the same schedule).
    steps: int = Field(30, ge=1, description="Rollout batches.")
    batch_size: int = Field(
        32,
        ge=1,
        description="Completions per rollout batch, all processes together (GRPO/RLOO: "
        "batch_size / num_generations prompts x num_generations completions).",
    )
    mini_batch_size: int = Field(8, ge=1, description="Rollouts per optimizer step (all processes together).")
    ppo_epochs: int = Field(
        4, ge=1, description="Passes over each rollout batch (GRPO/RLOO: num_iterations)."
    )
    learning_rate: float = Field(1e-3, gt=0, description="Policy (LoRA) learning rate.")
    value_learning_rate: float = Field(
        2e-4, gt=0, description="Value model learning rate (full fine-tuning)."
    )
    max_grad_norm: float = Field(1.0, gt=0)

    # Sampling.
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0, description="0 = off.")
    top_p: float = Field(1.0, gt=0, le=1)

    # Reward shaping.
    init_kl_coef: float = Field(0.05, ge=0, description="KL penalty coefficient (GRPO/RLOO: beta).")
    adaptive_kl: bool = Field(
        True, description="Ziegler et al.'s adaptive controller; False keeps the coefficient."
    )
    kl_target: float = Field(4.0, gt=0, description="Adaptive KL: target per-sequence KL (nats).")
    kl_horizon: int = Field(2000, ge=1, description="Adaptive KL: horizon in episodes.")
    missing_eos_penalty: float | None = Field(
        1.0, ge=0, description="Subtracted from the score of responses that end without EOS; None = off."
    )
    whiten_rewards: bool = False

    # PPO proper.
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)

    # GRPO / RLOO.
    num_generations: int = Field(4, ge=2, description="GRPO/RLOO: completions per prompt.")

    # Held-out evaluation (SFT vs tuned policy on align_data's sft/eval.jsonl prompts) and the gate.
    eval_prompts: int = Field(64, ge=1, description="At most this many held-out prompts.")
    eval_do_sample: bool = Field(False, description="False: greedy; True: sampling with a fixed seed.")
    min_reward_gain: float = Field(
        0.0, description="Gate: reward_ppo_eval - reward_sft_eval must exceed this."
    )
    max_kl: float = Field(
        30.0, gt=0, description="Gate: mean per-sequence KL(policy || SFT) on eval prompts."
    )

    num_processes: int = Field(1, ge=1, description="torchrun processes (>1 launches a torchrun subprocess).")
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="Torch CPU threads while the stage runs (CPU only); default: torch's own choice. "
        "1 is fastest for tiny models on a busy machine.",
    )
    log_every: int = Field(1, ge=1)
    sample_every: int = Field(10, ge=1, description="Log a table of sample rollouts every N steps.")

    NOT_RESULT_AFFECTING = frozenset({"num_processes", "cpu_threads", "log_every", "sample_every"})

    @model_validator(mode="after")
    def _batches(self) -> PpoConfig:
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"ppo.batch_size ({self.batch_size}) must be a multiple of "
                f"ppo.mini_batch_size ({self.mini_batch_size})"
            )
        if self.algorithm != "ppo" and self.batch_size % self.num_generations:
            raise ValueError(
                f"ppo.batch_size ({self.batch_size}) must be a multiple of ppo.num_generations "
                f"({self.num_generations}) for {self.algorithm}"
            )
        for name in ("batch_size", "mini_batch_size"):
            if getattr(self, name) % self.num_processes:
                raise ValueError(
                    f"ppo.{name} ({getattr(self, name)}) must be a multiple of "
                    f"ppo.num_processes ({self.num_processes})"
                )
        return self
