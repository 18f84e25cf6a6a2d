"""Training a reward model on preference pairs, written once for the `reward` stage (the policy's reward
model, on align_data's `rm` pairs) and the `judge` stage (the independent judge, on the `judge` pairs):
both must be trained the same way, so the judge differs from the reward model only in what it saw, and
neither stage imports the other.

trl's `RewardTrainer` on `AutoModelForSequenceClassification` (one output, the reward), initialised from
the SFT model's merged weights (the score head is new), Bradley-Terry loss. Before training, the SFT
model answers a share of the training prompts and the held-out prompts; its answers become rejected
answers of kind `on_policy` against the reference, so the reward model learns to rank what the policy
actually says below the reference, not only align_data's made-up wrong answers. After training the
stage scores every held-out pair itself (accuracy overall and per rejected kind) and compares each
held-out reference with the stock answers (`prefers_reference_over_generic`).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf.reward import RewardModelConfig
from tasks.common.alignment import PREF_FILES
from tasks.common.artifacts import Manifest
from tasks.common.generation import Messages, chat_prompt_ids, generate_batched, generation_config
from tasks.common.hf_callback import MetricLoggerCallback
from tasks.common.jsonl import read_jsonl, write_jsonl
from tasks.common.models import (
    count_parameters,
    device,
    load_causal_lm,
    load_tokenizer,
    model_dir,
    save_model_folder,
    torch_threads,
)
from tasks.common.reward_model import evaluate_pairs, load_reward_model, prefers_reference_over_generic
from tasks.common.splits import hash_rank
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.common.training import (
    loop_args,
    loss_ends,
    records_dataset,
    remove_trainer_dir,
    warn_if_longer_than_trained,
)

log = logging.getLogger(__name__)
ON_POLICY_FILE = "on_policy.jsonl"  # the SFT answers used as rejected (train and eval), to read them
COLUMNS = ["prompt", "chosen", "rejected"]
_WORD = re.compile(r"\w+")


@dataclass
class Pairs:
    """A reward model's training pairs and held-out pairs, on-policy ones included."""

    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    on_policy: list[dict[str, Any]]
    on_policy_seconds: float = 0.0


def train_reward_model(
    cfg: RewardModelConfig,
    inputs: dict[str, Manifest],
    out: Path,
    log_: MetricLogger,
    pairs_file: str,
    stage: str,
) -> StageReport:
    """The stage function of `reward` (pairs_file = PREF_FILES["train"]) and `judge` (PREF_FILES["judge"]),
    on `cfg.threads` CPU threads (tiny models train faster on fewer)."""
    with torch_threads(cfg.threads):
        return _train(cfg, inputs, out, log_, pairs_file, stage)


def _train(
    cfg: RewardModelConfig,
    inputs: dict[str, Manifest],
    out: Path,
    log_: MetricLogger,
    pairs_file: str,
    stage: str,
) -> StageReport:
    from transformers import set_seed

    base = model_dir(inputs["sft"])
    tok = load_tokenizer(base)
    pairs = read_pairs(cfg, inputs["align_data"], pairs_file)
    add_on_policy(cfg, base, tok, pairs)
    write_jsonl(out / ON_POLICY_FILE, pairs.on_policy)
    set_seed(cfg.seed)  # the new score head's initialisation
    model = load_reward_model(base, tok)
    warn_if_longer_than_trained(model, cfg.max_length, stage)
    callback = MetricLoggerCallback(log_)
    evals = records_dataset(pairs.evals[: cfg.max_eval_samples], COLUMNS)
    trainer = build_trainer(cfg, model, tok, records_dataset(pairs.train, COLUMNS), evals, out, [callback])
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ValueError(
            f"every training pair is longer than {stage}.max_length={cfg.max_length} tokens: raise it"
        )
    before, after, metrics = fit(cfg, trainer, tok, pairs.evals, callback)
    metrics["prefers_reference_over_generic"] = generic_preference(cfg, trainer.model, tok, pairs.evals)
    metrics["on_policy_seconds"] = pairs.on_policy_seconds
    save_model_folder(trainer.model, tok, out / "model")
    remove_trainer_dir(out)
    log_.log_dict({"before": before, "after": after}, f"{stage}/eval_pairs.json")
    log.info(
        "%s: accuracy %.3f -> %.3f on %d held-out pairs (%s); reference above every generic answer on %.3f",
        stage,
        before["accuracy"],
        after["accuracy"],
        len(pairs.evals),
        ", ".join(f"{k[9:]} {v:.2f}" for k, v in after.items() if k.startswith("accuracy_")),
        metrics["prefers_reference_over_generic"],
    )
    splits = Counter(r["split"] for r in pairs.on_policy)
    if pairs.on_policy:
        answers = [r["rejected"][-1]["content"] for r in pairs.on_policy]
        metrics["on_policy_mean_chars"] = sum(map(len, answers)) / len(answers)
    return StageReport(
        counts={
            "train_pairs": len(pairs.train),
            "train_pairs_too_long": len(pairs.train) - kept,
            "on_policy_train_pairs": splits["train"],
            "on_policy_eval_pairs": splits["eval"],
            "eval_pairs": len(pairs.evals),
            "eval_pairs_truncated": int(after["truncated"]),
            "steps": trainer.state.global_step,
            "params": count_parameters(trainer.model),
        },
        metrics=metrics,
        extra={"base_model": str(base), "max_length": cfg.max_length, "pairs_file": pairs_file},
    )


def read_pairs(cfg: RewardModelConfig, align: Manifest, pairs_file: str) -> Pairs:
    """The training pairs (first `max_train_samples`) and every held-out pair of an align_data folder."""
    train = read_jsonl(align.file(pairs_file))[: cfg.max_train_samples]
    evals = read_jsonl(align.file(PREF_FILES["eval"]))
    if not train or not evals:
        raise ValueError(
            f"align_data ({align.path}) needs preference pairs in both {pairs_file} and "
            f"{PREF_FILES['eval']} (train: {len(train)}, eval: {len(evals)})"
        )
    return Pairs(train, evals, [])


# --- on-policy negatives --------------------------------------------------------------------------------


def add_on_policy(cfg: RewardModelConfig, base: Path, tok: Any, pairs: Pairs) -> None:
    """Answer a seeded sample of the training prompts (a balanced share: as many as the average kind has
    pairs, unless configured) and of the held-out prompts with the SFT model; add each answer that is not
    a near-copy of the reference as a rejected answer of kind `on_policy`."""
    kinds = Counter(r.get("rejected_kind") for r in pairs.train)
    n_train = (
        cfg.on_policy_prompts if cfg.on_policy_prompts is not None else round(len(pairs.train) / len(kinds))
    )
    train_rows = distinct_prompts(pairs.train, n_train, cfg.seed)
    eval_rows = distinct_prompts(pairs.evals, cfg.on_policy_eval_prompts, cfg.seed)
    if not train_rows and not eval_rows:
        return
    started = time.perf_counter()
    answers = sample_answers(cfg, base, tok, [r["prompt"] for r in train_rows + eval_rows])
    pairs.on_policy_seconds = time.perf_counter() - started
    made = [on_policy_row(r, a) for r, a in zip(train_rows + eval_rows, answers, strict=True)]
    train_new = [r for r in made[: len(train_rows)] if r]
    eval_new = [r for r in made[len(train_rows) :] if r]
    pairs.train += train_new
    pairs.evals = sorted(
        pairs.evals + eval_new, key=lambda r: hash_rank(f"{r['id']}:{r['rejected_kind']}", cfg.seed)
    )
    pairs.on_policy = [{**r, "split": "train"} for r in train_new] + [
        {**r, "split": "eval"} for r in eval_new
    ]
    log.info(
        "on-policy negatives: %d train, %d eval SFT answers in %.1fs (%d empty or near-copies dropped)",
        len(train_new),
        len(eval_new),
        pairs.on_policy_seconds,
        len(made) - len(train_new) - len(eval_new),
    )


def distinct_prompts(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """The first row of each prompt id, in a seeded hash order, the first `n` of them (None: all)."""
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(str(r["id"]), r)
    ordered = sorted(first.values(), key=lambda r: hash_rank(str(r["id"]), seed))
    return ordered if n is None else ordered[:n]


def sample_answers(cfg: RewardModelConfig, base: Path, tok: Any, prompts: list[Messages]) -> list[str]:
    """The SFT model's sampled answer to each prompt (as PPO samples its rollouts: temperature, no top-k),
    generated in batches of similar prompt length."""
    import torch

    model = load_causal_lm(base).to(device()).eval()
    gen = generation_config(
        tok.eos_token_id,
        tok.pad_token_id,
        cfg.on_policy_max_new_tokens,
        do_sample=True,
        temperature=cfg.on_policy_temperature,
    )
    ids = [chat_prompt_ids(tok, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    torch.manual_seed(cfg.seed)
    out = generate_batched(model, [ids[i] for i in order], gen, cfg.on_policy_batch_size)
    answers = [""] * len(ids)
    for i, tokens in zip(order, out, strict=True):
        answers[i] = tok.decode(tokens, skip_special_tokens=True).strip()
    del model
    return answers


def near_copy(a: str, b: str) -> bool:
    """Same words, mostly (Jaccard >= 0.7): an SFT answer that restates the reference is not wrong."""
    wa, wb = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    return len(wa & wb) / max(len(wa | wb), 1) >= 0.7


def on_policy_row(row: dict[str, Any], answer: str) -> dict[str, Any] | None:
    """A preference row: the reference chosen over the SFT answer (None for an empty or near-copy one)."""
    reference = row["chosen"][-1]["content"]
    if not answer or near_copy(answer, reference):
        return None
    return {
        "id": row["id"],
        "module": row.get("module"),
        "prompt": row["prompt"],
        "chosen": row["chosen"],
        "rejected": [{"role": "assistant", "content": answer}],
        "rejected_kind": "on_policy",
    }


# --- training and scoring -------------------------------------------------------------------------------


def build_trainer(
    cfg: RewardModelConfig, model: Any, tok: Any, train: Any, evals: Any, out: Path, callbacks: list[Any]
) -> Any:
    """trl's `RewardTrainer` (Bradley-Terry loss on chosen/rejected) with our loop settings."""
    from trl.trainer.reward_config import RewardConfig as TrlRewardConfig
    from trl.trainer.reward_trainer import RewardTrainer

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
    cfg: RewardModelConfig,
    trainer: Any,
    tok: Any,
    eval_records: list[dict[str, Any]],
    callback: MetricLoggerCallback,
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


def generic_preference(cfg: RewardModelConfig, model: Any, tok: Any, evals: list[dict[str, Any]]) -> float:
    """`prefers_reference_over_generic` on every held-out prompt (its reference answer)."""
    rows = distinct_prompts(evals, None, cfg.seed)
    return prefers_reference_over_generic(
        model,
        tok,
        [r["prompt"] for r in rows],
        [r["chosen"][-1]["content"] for r in rows],
        cfg.eval_batch_size,
        cfg.max_length,
    )


def accuracy_gate(section: str, min_accuracy: float, metrics: dict[str, float]) -> str | None:
    """The reward and judge stages' gate: a model that cannot rank held-out pairs teaches (or judges)
    noise."""
    acc = metrics.get("eval_accuracy")
    if acc is None:
        return f"the {section} stage reported no eval_accuracy"
    if acc < min_accuracy:
        return (
            f"held-out pair accuracy {acc:.3f} is below {section}.min_eval_accuracy={min_accuracy} "
            f"(before training: {metrics.get('eval_accuracy_before', float('nan')):.3f})"
        )
    return None
