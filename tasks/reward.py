"""Stage `reward`: a reward model trained on align_data's preference pairs.

trl's `RewardTrainer` on `AutoModelForSequenceClassification` (one output, the reward), initialised
from the SFT model's merged weights (the score head is new). It learns to give the chosen answer a
higher reward than the rejected one (Bradley-Terry loss). After training the stage scores every
held-out pair itself, batched, so accuracy and margin are exact, and breaks accuracy down by how the
rejected answer was made. Quality gate: `reward.min_eval_accuracy`.

Output: `model/` (the sequence-classification model + tokenizer, pad id set), the PPO stage's judge.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
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
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.sft import TRAINER_DIR, load_records, loop_args, warn_if_longer_than_trained

log = logging.getLogger(__name__)
STAGE_VERSION = 1


def load_reward_model(path: Path, tokenizer: Any = None) -> Any:
    """A sequence-classification model with one output from a model folder (a causal LM gets a new head)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:  # a causal LM folder has lm_head and no score head: expected, so trl's helper quiets that report
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:  # pragma: no cover - moved in another trl version
        suppress_seqcls_warning = contextlib.nullcontext
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=torch.float32, local_files_only=True
        )
    if tokenizer is not None:  # the model finds each sequence's last token by its pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def score_conversations(
    model: Any, tok: Any, conversations: list[list[dict]], batch_size: int = 32, max_length: int | None = None
) -> tuple[list[float], int]:
    """(rewards, number truncated): each conversation rendered with the chat template, scored in batches.

    Longer conversations keep their last `max_length` tokens: the reward is read at the last token, so
    the answer's end must stay in.
    """
    import torch

    was_training = model.training
    model.eval()
    seqs = [tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in conversations]
    truncated = 0
    if max_length:
        truncated = sum(len(s) > max_length for s in seqs)
        seqs = [s[-max_length:] for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths per batch: less padding
    scores = [0.0] * len(seqs)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
        for row, i in enumerate(idx):
            scores[i] = float(logits[row])
    model.train(was_training)
    return scores, truncated


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
    with torch_threads(cfg.threads):
        return train_reward(cfg, inputs, out, log_)


def train_reward(
    cfg: RewardConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger
) -> StageReport:
    from transformers import set_seed
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    base = model_dir(inputs["sft"])
    align = inputs["align_data"]
    tok = load_tokenizer(base)
    set_seed(cfg.seed)  # the new score head's initialisation
    model = load_reward_model(base, tok)
    columns = ["prompt", "chosen", "rejected"]
    train = load_records(align, PREF_FILES["train"], cfg.max_train_samples, columns)
    eval_records = read_jsonl(align.file(PREF_FILES["eval"]))
    if train is None or not eval_records:
        raise ValueError(
            f"align_data ({align.path}) needs preference pairs in both {PREF_FILES['train']} and "
            f"{PREF_FILES['eval']} (train: {len(train) if train else 0}, eval: {len(eval_records)})"
        )
    evals = load_records(align, PREF_FILES["eval"], cfg.max_eval_samples, columns)
    max_length = cfg.max_length
    warn_if_longer_than_trained(model, max_length, "reward")

    args = TrlRewardConfig(
        **loop_args(cfg, out, max_length),
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        disable_dropout=True,
    )
    callback = MetricLoggerCallback(log_)
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tok,
        callbacks=[callback],
    )
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ValueError(
            f"every training pair is longer than reward.max_length={max_length} tokens: raise it"
        )
    before = evaluate_pairs(trainer.model, tok, eval_records, cfg.eval_batch_size, max_length)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    after = evaluate_pairs(trainer.model, tok, eval_records, cfg.eval_batch_size, max_length)

    save_model_folder(trainer.model, tok, out / "model")
    shutil.rmtree(out / TRAINER_DIR, ignore_errors=True)

    metrics = {f"eval_{k}": v for k, v in after.items() if k not in ("pairs", "truncated")}
    metrics.update(
        {
            "eval_accuracy_before": before["accuracy"],
            "eval_margin_before": before["margin"],
            "train_loss": result.training_loss,
            "train_seconds": seconds,
        }
    )
    losses = callback.series("train/loss")
    if losses:
        metrics["train_loss_first"], metrics["train_loss_last"] = losses[0], losses[-1]
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
        extra={"base_model": str(base), "max_length": max_length},
    )


def gate(cfg: RewardConfig, manifest: Manifest) -> str | None:
    acc = manifest.metrics.get("eval_accuracy")
    if acc is None:
        return "the reward stage reported no eval_accuracy"
    if acc < cfg.min_eval_accuracy:
        return (
            f"held-out pair accuracy {acc:.3f} is below reward.min_eval_accuracy={cfg.min_eval_accuracy} "
            f"(before training: {manifest.metrics.get('eval_accuracy_before', float('nan')):.3f})"
        )
    return None
