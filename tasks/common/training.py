"""What the trl-based training stages (sft, reward, judge, and ppo's GRPO/RLOO) share: the trainer arguments
every stage pins, our `TrainLoop` config as trainer arguments, the LoRA adapter, records as a dataset,
and the pieces of bookkeeping around `trainer.train()`.

Kept here so no stage imports another: the reward stage trains exactly as the SFT stage does because
both call these, not because one borrows the other's internals.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from conf.base import TrainLoop
from tasks.common.artifacts import Manifest
from tasks.common.jsonl import read_jsonl
from tasks.common.models import has_cuda

log = logging.getLogger(__name__)
TRAINER_DIR = ".trainer"  # the Trainer's scratch output_dir, removed before the stage ends


def trainer_args(bf16: bool | None = None) -> dict[str, Any]:
    """Arguments every trl/transformers trainer of ours pins (see the DAG notes).

    bf16: None picks bf16 on a GPU that supports it and fp32 elsewhere (trl defaults to bf16, which
    fails on a CPU-only machine). No checkpoints (stages are cached whole), no auto-reporting (metrics
    reach MLflow through `tasks.common.hf_callback`), no gradient checkpointing (small models).
    """
    import dataclasses

    import torch
    from transformers import TrainingArguments

    cuda = has_cuda()
    if bf16 is None:
        bf16 = cuda and torch.cuda.is_bf16_supported()
    if bf16 and not cuda:
        raise ValueError("bf16=true needs a GPU; leave it unset (auto) on a CPU-only machine")
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    # transformers 5.24 renamed gradient_checkpointing (now a deprecated alias that warns when set)
    checkpointing = (
        "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    )
    return {
        "use_cpu": not cuda,
        "bf16": bool(bf16),
        "fp16": False,
        checkpointing: False,
        "report_to": "none",
        "save_strategy": "no",
        "dataloader_num_workers": 0,
    }


def loop_args(cfg: TrainLoop, out: Path, max_length: int, evaluate: bool = True) -> dict[str, Any]:
    """Trainer arguments from our `TrainLoop` config (sft and reward), the Trainer writing under `out`."""
    eval_steps = cfg.eval_steps or 5 * cfg.logging_steps
    return {
        "output_dir": str(out / TRAINER_DIR),
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.eval_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "warmup_steps": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "lr_scheduler_type": cfg.lr_scheduler,
        "seed": cfg.seed,
        "max_length": max_length,
        "logging_steps": cfg.logging_steps,
        "logging_first_step": True,
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": eval_steps,
        **trainer_args(cfg.bf16),
    }


def lora_config(r: int, alpha: int, dropout: float, target_modules: str | list[str]) -> Any:
    """The LoRA adapter every stage trains on a causal LM (SFT, and the policy of PPO/GRPO/RLOO).

    `target_modules`: module names, or one string peft expands (e.g. "all-linear").
    """
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )


def save_adapter(peft_model: Any, tok: Any, folder: Path) -> None:
    """Save a LoRA adapter (with the tokenizer) so its files depend only on what was trained.

    peft writes `target_modules` in set order (it changes with the string hash seed), and the base model
    as the absolute path it was loaded from (in `adapter_config.json` and the adapter's README); the
    first is sorted, the second made relative to the artifacts root (`pretrain/<hash12>/model`), so a
    rebuilt or copied stage keeps its content hash.
    """
    import json

    folder = Path(folder)
    peft_model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    base = config.get("base_model_name_or_path")
    root = folder.resolve().parents[2]  # <root>/<stage>/<hash12>/adapter
    if isinstance(base, str) and Path(base).is_absolute() and Path(base).resolve().is_relative_to(root):
        relative = Path(base).resolve().relative_to(root).as_posix()
        for name in ("adapter_config.json", "README.md"):
            if (folder / name).is_file():
                text = (folder / name).read_text(encoding="utf-8")
                (folder / name).write_text(text.replace(base, relative), encoding="utf-8")


def load_records(manifest: Manifest, name: str, limit: int | None, columns: list[str]) -> Any:
    """One of align_data's JSONL files as a `datasets.Dataset` with only `columns` (first `limit` rows);
    None when the file holds no rows."""
    rows = read_jsonl(manifest.file(name))
    if limit:
        rows = rows[:limit]
    return records_dataset(rows, columns) if rows else None


def records_dataset(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    """Rows as a `datasets.Dataset` with only `columns` (what a trl trainer reads; bookkeeping fields
    such as `rejected_kind` stay out)."""
    from datasets import Dataset

    return Dataset.from_list([{c: r[c] for c in columns} for r in rows])


def warn_if_longer_than_trained(model: Any, max_length: int, section: str) -> None:
    """RoPE models run past their pretraining context, but less well: say so rather than cut the data."""
    trained = getattr(model.config, "max_position_embeddings", None)
    if trained and max_length > trained:
        log.warning(
            "%s.max_length=%d exceeds the model's pretraining context (%d): longer sequences are allowed "
            "but the model has not seen such positions",
            section,
            max_length,
            trained,
        )


def loss_ends(callback: Any) -> dict[str, float]:
    """`train_loss_first` and `train_loss_last` from a `MetricLoggerCallback` (empty if nothing was logged):
    the quickest check that a run learned anything."""
    losses = callback.series("train/loss")
    return {"train_loss_first": losses[0], "train_loss_last": losses[-1]} if losses else {}


def remove_trainer_dir(out: Path) -> None:
    """Delete the Trainer's scratch folder: stages are cached whole, so its checkpoints are never reused."""
    shutil.rmtree(out / TRAINER_DIR, ignore_errors=True)
