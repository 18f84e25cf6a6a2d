"""Stage `reward`: a reward model trained on align_data's preference pairs.

trl's `RewardTrainer` on `AutoModelForSequenceClassification` (one output, the reward), initialised
from the SFT model's merged weights (the score head is new). It learns to give the chosen answer a
higher reward than the rejected one (Bradley-Terry loss). After training the stage scores every
held-out pair itself, batched, so accuracy and margin are exact, and breaks accuracy down by how the
rejected answer was made. Quality gate: `reward.min_eval_accuracy`.

Output: `model/` (the sequence-classification model + tokenizer, pad id set), the PPO stage's judge.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from conf.reward import RewardConfig
from tasks.common.alignment import PREF_FILES
from tasks.common.artifacts import Manifest
from tasks.common.hf_callback import MetricLoggerCallback
from tasks.common.jsonl import read_jsonl
from tasks.common.models import count_parameters, load_tokenizer, model_dir, save_model_folder, torch_threads
from tasks.common.reward_model import load_reward_model, score_conversations
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.common.training import (
    load_records,
    loop_args,
    loss_ends,
    remove_trainer_dir,
    warn_if_longer_than_trained,
)

log = logging.getLogger(__name__)
STAGE_VERSION = 1


def evaluate_pairs(
    model: Any, tok: Any, records: list[dict], batch_size: int = 32, max_length: int | None = None
) -> dict[str, float]:
    """Accuracy (chosen scored above rejected), mean margin, and accuracy per `rejected_kind`."""
    convs = [r["prompt"] + r["chosen"] for r in records] + [r["prompt"] + r["rejected"] for r in records]
    scores, truncated = score_conversations(model, tok, convs, batch_size, max_length)
    n = len(records)
    margins = [scores[i] - scores[n + i] for i in range(n)]
    out = {
        "accuracy": sum(m > 0 for m in margins) / n,
        "margin": sum(margins) / n,
        "reward_chosen": sum(scores[:n]) / n,
        "reward_rejected": sum(scores[n:]) / n,
        "pairs": float(n),
        "truncated": float(truncated),
    }
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r, m in zip(records, margins, strict=True):
        by_kind[r.get("rejected_kind") or "unknown"].append(m)
    for kind, ms in sorted(by_kind.items()):
        out[f"accuracy_{kind}"] = sum(m > 0 for m in ms) / len(ms)
    return out


def reward(cfg: RewardConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    """The stage function, on `reward.threads` CPU threads (tiny models train faster on fewer)."""
    with torch_threads(cfg.threads):
        return train_reward(cfg, inputs, out, log_)


def train_reward(
    cfg: RewardConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger
) -> StageReport:
    from transformers import set_seed

    base = model_dir(inputs["sft"])
    tok = load_tokenizer(base)
    set_seed(cfg.seed)  # the new score head's initialisation
    model = load_reward_model(base, tok)
    train, evals, eval_records = read_pairs(cfg, inputs["align_data"])
    warn_if_longer_than_trained(model, cfg.max_length, "reward")
    callback = MetricLoggerCallback(log_)
    trainer = build_trainer(cfg, model, tok, train, evals, out, [callback])
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ValueError(
            f"every training pair is longer than reward.max_length={cfg.max_length} tokens: raise it"
        )
    before, after, metrics = fit(cfg, trainer, tok, eval_records, callback)
    save_model_folder(trainer.model, tok, out / "model")
    remove_trainer_dir(out)
    log_.log_dict({"before": before, "after": after}, "reward/eval_pairs.json")
    log.info(
        "reward: accuracy %.3f -> %.3f on %d held-out pairs",
        before["accuracy"],
        after["accuracy"],
        len(eval_records),
    )
    return StageReport(
        counts={
            "train_pairs": len(train),
            "train_pairs_too_long": len(train) - kept,
            "eval_pairs": len(eval_records),
            "eval_pairs_truncated": int(after["truncated"]),
            "steps": trainer.state.global_step,
            "params": count_parameters(trainer.model),
        },
        metrics=metrics,
        extra={"base_model": str(base), "max_length": cfg.max_length},
    )


def read_pairs(cfg: RewardConfig, align: Manifest) -> tuple[Any, Any, list[dict]]:
    """(train dataset, eval dataset for the Trainer's eval loss, all held-out pairs for exact scoring)."""
    columns = ["prompt", "chosen", "rejected"]
    train = load_records(align, PREF_FILES["train"], cfg.max_train_samples, columns)
    eval_records = read_jsonl(align.file(PREF_FILES["eval"]))
    if train is None or not eval_records:
        raise ValueError(
            f"align_data ({align.path}) needs preference pairs in both {PREF_FILES['train']} and "
            f"{PREF_FILES['eval']} (train: {len(train) if train else 0}, eval: {len(eval_records)})"
        )
    evals = load_records(align, PREF_FILES["eval"], cfg.max_eval_samples, columns)
    return train, evals, eval_records


def build_trainer(
    cfg: RewardConfig, model: Any, tok: Any, train: Any, evals: Any, out: Path, callbacks: list
) -> Any:
    """trl's `RewardTrainer` (Bradley-Terry loss on chosen/rejected) with our loop settings."""
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    args = TrlRewardConfig(
        **loop_args(cfg, out, cfg.max_length),
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        disable_dropout=True,
    )
    return RewardTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tok,
        callbacks=callbacks,
    )


def fit(
    cfg: RewardConfig, trainer: Any, tok: Any, eval_records: list[dict], callback: MetricLoggerCallback
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Train, scoring every held-out pair before and after; returns (before, after, stage metrics)."""
    before = evaluate_pairs(trainer.model, tok, eval_records, cfg.eval_batch_size, cfg.max_length)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    after = evaluate_pairs(trainer.model, tok, eval_records, cfg.eval_batch_size, cfg.max_length)
    metrics = {f"eval_{k}": v for k, v in after.items() if k not in ("pairs", "truncated")}
    metrics.update(
        {
            "eval_accuracy_before": before["accuracy"],
            "eval_margin_before": before["margin"],
            "train_loss": result.training_loss,
            "train_seconds": seconds,
        }
    )
    metrics.update(loss_ends(callback))
    return before, after, metrics


def gate(cfg: RewardConfig, manifest: Manifest) -> str | None:
    """PPO optimises against this model: one that cannot rank held-out pairs would teach it noise."""
    acc = manifest.metrics.get("eval_accuracy")
    if acc is None:
        return "the reward stage reported no eval_accuracy"
    if acc < cfg.min_eval_accuracy:
        return (
            f"held-out pair accuracy {acc:.3f} is below reward.min_eval_accuracy={cfg.min_eval_accuracy} "
            f"(before training: {manifest.metrics.get('eval_accuracy_before', float('nan')):.3f})"
        )
    return None
