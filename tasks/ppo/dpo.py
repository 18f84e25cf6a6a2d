"""`ppo.algorithm: dpo`: Direct Preference Optimisation (Rafailov et al., 2023) through trl's DPOTrainer.

DPO optimises the policy on preference pairs directly, with no reward model and no sampling in the loop:
its loss is a logistic loss on beta * (log-ratio of chosen - log-ratio of rejected), each log-ratio
taken against the reference. Here the pairs are the ones the reward model trained on (align_data's
`rm` role, `PREF_FILES["train"]`), so DPO and the RL algorithms learn from the same preferences; the
policy is the same LoRA adapter on the merged SFT model, and the reference is that model with the adapter
disabled (trl does this itself when given a `peft_config` and no `ref_model`). The stage then evaluates
and saves the DPO policy exactly as it does a PPO one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from conf.ppo import PpoConfig
from tasks.common.alignment import PREF_FILES
from tasks.common.artifacts import Manifest
from tasks.common.hf_callback import MetricLoggerCallback
from tasks.common.tracking import MetricLogger
from tasks.common.training import load_records, trainer_args

PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


def load_pairs(manifest: Manifest, limit: int | None) -> Any:
    """The reward model's training pairs as a `datasets.Dataset` in trl's explicit-prompt conversational
    format (the first `limit` pairs when set)."""
    pairs = load_records(manifest, PREF_FILES["train"], limit, PAIR_COLUMNS)
    if pairs is None:
        raise ValueError(f"{manifest.file(PREF_FILES['train'])} holds no preference pairs; check align_data")
    return pairs


def dpo_args(cfg: PpoConfig, output_dir: Path) -> Any:
    """trl's DPOConfig from ours: `dpo_epochs` passes over the pairs, `mini_batch_size` pairs per optimizer
    step, our learning rate with a linear decay to 0 (as PPO's), a log every `log_every` x (batch_size /
    mini_batch_size) optimizer steps (PPO logs once per batch_size episodes), fp32 on CPU.

    DPO has no rollouts, so PPO's `steps` and `ppo_epochs` do not apply: its natural unit is a pass over
    the preference pairs.
    """
    from trl import DPOConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DPOConfig(
        output_dir=str(output_dir),
        seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        num_train_epochs=cfg.dpo_epochs,
        per_device_train_batch_size=cfg.mini_batch_size // world,
        beta=cfg.dpo_beta,
        max_length=cfg.dpo_max_length,
        max_grad_norm=cfg.max_grad_norm,
        disable_dropout=True,
        logging_steps=cfg.log_every * max(1, cfg.batch_size // cfg.mini_batch_size),
        **trainer_args(bf16=False),
    )


def dpo_history(callback: MetricLoggerCallback) -> list[dict[str, float]]:
    """Per log: DPO loss, implicit reward margin and pair accuracy (for `train_loss_first/last` ...)."""
    names = {"loss": "loss", "margin": "rewards/margins", "accuracy": "rewards/accuracies"}
    return [
        {key: m[f"dpo/train/{name}"] for key, name in names.items() if f"dpo/train/{name}" in m}
        for _, m in callback.history
        if "dpo/train/loss" in m
    ]


def train_dpo(
    cfg: PpoConfig, base: Any, tok: Any, pairs: Any, lora: Any, log_: MetricLogger
) -> tuple[Any, list[dict[str, float]], int]:
    """Train a fresh LoRA adapter (`lora`) on `base` with DPO on `pairs`.

    Returns (peft policy, history, optimizer steps) on the main process; the policy is None on the others.
    """
    from trl import DPOTrainer

    scratch = Path(tempfile.mkdtemp(prefix="lmforge-dpo-"))
    callback = MetricLoggerCallback(log_, prefix="dpo/")
    try:
        trainer = DPOTrainer(
            model=base,
            args=dpo_args(cfg, scratch),
            train_dataset=pairs,
            processing_class=tok,
            peft_config=lora,
            callbacks=[callback],
        )
        trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tok.padding_side = "left"  # generation (the held-out comparison) pads on the left
    main = trainer.accelerator.is_main_process
    policy = trainer.accelerator.unwrap_model(trainer.model) if main else None
    return policy, dpo_history(callback), trainer.state.global_step
