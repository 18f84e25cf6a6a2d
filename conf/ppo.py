"""Config of the `ppo` stage: alignment of the SFT policy: RLHF against the reward model (PPO, or trl's
GRPO/RLOO), or DPO (trl) on the reward model's preference pairs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from conf.base import StageConfig


class PpoConfig(StageConfig):
    algorithm: Literal["ppo", "grpo", "rloo", "dpo"] = Field(
        "ppo",
        description="ppo: our RLHF-PPO (value model, GAE, KL-shaped reward); grpo/rloo: trl's trainers; "
        "dpo: trl's DPOTrainer on the reward model's training pairs (no reward model in the loop).",
    )
    seed: int = 0
    max_train_prompts: int | None = Field(
        None, ge=1, description="Use at most this many training prompts (DPO: preference pairs)."
    )
    max_prompt_tokens: int = Field(96, ge=4, description="Prompts longer than this (in tokens) are skipped.")

    # The policy's fresh LoRA adapter on top of the merged SFT model.
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Keep 0 so rollout and update log-probs agree.")
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"

    # Optimisation. Batch sizes are global (split over processes); a step is one rollout batch, used for
    # `ppo_epochs` passes of batch_size / mini_batch_size optimizer steps (GRPO/RLOO: the same schedule).
    # DPO has no rollouts: `dpo_epochs` passes over the pairs, mini_batch_size pairs per optimizer step.
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
    learning_rate: float = Field(
        3e-4,
        gt=0,
        description="Policy (LoRA) learning rate, decayed linearly to 0. On tiny, 1e-3 clipped 17% of "
        "the policy's tokens over the run (23% in the first half); 3e-4 clips 5% (8%) and reaches the same "
        "training reward.",
    )
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
    kl_horizon: int | None = Field(
        None,
        ge=1,
        description="Adaptive KL: horizon in episodes; None: a tenth of the run (steps x batch_size), so the "
        "coefficient can move by up to e^+-2 (~7x) over the run, whatever its length.",
    )
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

    # DPO.
    dpo_beta: float = Field(
        0.1, gt=0, description="DPO: beta, the strength of the implicit KL to the SFT policy."
    )
    dpo_epochs: float = Field(
        2.0,
        gt=0,
        description="DPO: passes over the reward model's training pairs. On tiny (1347 pairs, busy cores): "
        "1 pass 2.5 min, pair margin 0.10, held-out reward gain -0.04; 2 passes 5 min, margin 0.34, gain "
        "+0.003; 2.8 passes 13 min, gain +0.05.",
    )
    dpo_max_length: int = Field(
        256, ge=8, description="DPO: token cap per prompt + answer (longer answers are cut at the end)."
    )

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

    # Gate thresholds change no output: a stricter gate re-checks the cached folder instead of re-running.
    NOT_RESULT_AFFECTING = frozenset(
        {"num_processes", "cpu_threads", "log_every", "sample_every", "min_reward_gain", "max_kl"}
    )

    def kl_horizon_episodes(self) -> int:
        """The adaptive KL controller's horizon: `kl_horizon`, or a tenth of the run's episodes (at least one
        batch). A fixed horizon longer than the run (the former default of 2000 episodes against tiny's 960)
        leaves the coefficient within ~10% of where it started."""
        return self.kl_horizon or max(self.batch_size, self.steps * self.batch_size // 10)

    @model_validator(mode="after")
    def _batches(self) -> PpoConfig:
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"ppo.batch_size ({self.batch_size}) must be a multiple of "
                f"ppo.mini_batch_size ({self.mini_batch_size})"
            )
        if self.algorithm in ("grpo", "rloo") and self.batch_size % self.num_generations:
            raise ValueError(
                f"ppo.batch_size ({self.batch_size}) must be a multiple of ppo.num_generations "
                f"({self.num_generations}) for {self.algorithm}"
            )
        if self.algorithm in ("grpo", "rloo") and (self.top_k or self.top_p < 1.0):
            raise ValueError(
                f"ppo.top_k / ppo.top_p are not supported with ppo.algorithm={self.algorithm}: trl computes "
                "its log-probs from the unfiltered distribution, not the one it samples from"
            )
        for name in ("batch_size", "mini_batch_size"):
            if getattr(self, name) % self.num_processes:
                raise ValueError(
                    f"ppo.{name} ({getattr(self, name)}) must be a multiple of "
                    f"ppo.num_processes ({self.num_processes})"
                )
        return self
