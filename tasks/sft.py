"""Stage `sft`: supervised fine-tuning of the pretrained model on align_data's instruction pairs.

trl's `SFTTrainer` with a peft LoRA adapter. The pairs are conversational prompt-completion records,
rendered with the tokenizer's chat template; trl builds labels with the prompt tokens set to -100, so
the loss covers only the answer (and its closing EOS, which teaches the model to stop).

Outputs: `adapter/` (the LoRA adapter + tokenizer) and `model/` (the adapter merged into the base
weights with `merge_and_unload`, + tokenizer): the reward model and PPO start from `model/`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from conf.base import TrainLoop
from conf.sft import SftConfig
from tasks.common.alignment import SFT_FILES
from tasks.common.artifacts import Manifest
from tasks.common.hf_callback import MetricLoggerCallback
from tasks.common.jsonl import read_jsonl
from tasks.common.models import (
    count_parameters,
    has_cuda,
    load_causal_lm,
    load_tokenizer,
    model_dir,
    save_model_folder,
    torch_threads,
    trainer_args,
)
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

log = logging.getLogger(__name__)
STAGE_VERSION = 1
TRAINER_DIR = ".trainer"  # the Trainer's scratch output_dir, removed before the stage ends


def loop_args(cfg: TrainLoop, out: Path, max_length: int, evaluate: bool = True) -> dict[str, Any]:
    """TrainingArguments shared by the sft and reward stages, from our config."""
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


def load_records(manifest: Manifest, name: str, limit: int | None, columns: list[str]):
    """One of align_data's JSONL files as a `datasets.Dataset` with only `columns` (first `limit` rows)."""
    from datasets import Dataset

    rows = read_jsonl(manifest.file(name))
    if limit:
        rows = rows[:limit]
    return Dataset.from_list([{c: r[c] for c in columns} for r in rows]) if rows else None


def check_target_modules(model: Any, names: list[str]) -> None:
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [n for n in names if n not in present]
    if len(missing) == len(names):
        raise ValueError(
            f"sft.target_modules {names} match no module of the model; it has e.g. "
            f"{', '.join(sorted(p for p in present if 'proj' in p)[:10])}"
        )
    if missing:
        log.warning("sft.target_modules not in the model (ignored by LoRA): %s", ", ".join(missing))


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


def sample_answers(model: Any, tok: Any, prompts: list[list[dict]], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers to a few prompts, for a human look in MLflow."""
    import torch

    model.eval()
    answers = []
    for prompt in prompts:
        ids = tok.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids = {k: v.to(model.device) for k, v in ids.items()}
        with torch.no_grad():
            gen = model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        answers.append(tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


def plain_loss_trainer_class() -> type:
    """`SFTTrainer` with the model's own cross-entropy loss instead of trl's fused LM head.

    trl 1.16 computes the SFT loss through a tiled "fused LM head" written for GPUs (Triton); its torch
    fallback takes ~80% of a CPU training step on small models. Without a GPU we use the plain path
    (full logits, `labels` already -100 on prompt tokens) and keep trl's token count and accuracy logs.
    """
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            loss, outputs = Trainer.compute_loss(self, model, inputs, True, num_items_in_batch)
            with torch.no_grad():
                labels = inputs["labels"][:, 1:]
                mask = labels != -100
                correct = (outputs.logits[:, :-1].argmax(-1) == labels) & mask
                self._metrics[mode]["mean_token_accuracy"].append(
                    (correct.sum() / mask.sum().clamp(min=1)).item()
                )
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return PlainLossSFTTrainer


def build_trainer(
    cfg: SftConfig, model: Any, tok: Any, train: Any, evals: Any, out: Path, callbacks: list
) -> Any:
    """The configured `SFTTrainer` (LoRA-wrapped model, tokenized datasets with prompt tokens masked)."""
    from peft import LoraConfig
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    check_target_modules(model, cfg.target_modules)
    warn_if_longer_than_trained(model, cfg.max_length, "sft")
    args = TrlSFTConfig(
        **loop_args(cfg, out, cfg.max_length, evaluate=evals is not None),
        completion_only_loss=True,  # prompt-completion data: labels are -100 on every prompt token
        assistant_only_loss=False,
        packing=False,
    )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    trainer_cls = SFTTrainer if has_cuda() else plain_loss_trainer_class()
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tok,
        peft_config=lora,
        callbacks=callbacks,
    )


def sft(cfg: SftConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    with torch_threads(cfg.threads):
        return train_sft(cfg, inputs, out, log_)


def train_sft(cfg: SftConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    base = model_dir(inputs["pretrain"])
    tok = load_tokenizer(base)
    model = load_causal_lm(base)
    columns = ["prompt", "completion"]
    train = load_records(inputs["align_data"], SFT_FILES["train"], cfg.max_train_samples, columns)
    evals = load_records(inputs["align_data"], SFT_FILES["eval"], cfg.max_eval_samples, columns)
    if train is None:
        raise ValueError(
            f"align_data ({inputs['align_data'].path}) has no SFT training pairs in {SFT_FILES['train']}"
        )
    callback = MetricLoggerCallback(log_)
    trainer = build_trainer(cfg, model, tok, train, evals, out, [callback])
    metrics: dict[str, float] = {}
    if evals is not None:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    started = time.perf_counter()
    result = trainer.train()
    metrics["train_seconds"] = time.perf_counter() - started
    metrics["train_loss"] = result.training_loss
    if evals is not None:
        final = trainer.evaluate()
        metrics["eval_loss"] = final["eval_loss"]
        if "eval_mean_token_accuracy" in final:
            metrics["eval_token_accuracy"] = final["eval_mean_token_accuracy"]
    losses = callback.series("train/loss")
    if losses:
        metrics["train_loss_first"], metrics["train_loss_last"] = losses[0], losses[-1]
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    if tokens:
        metrics["tokens_per_s"] = tokens / metrics["train_seconds"]

    peft_model = trainer.model
    peft_model.save_pretrained(str(out / "adapter"))
    tok.save_pretrained(str(out / "adapter"))
    trainable = count_parameters(peft_model, trainable_only=True)
    merged = peft_model.merge_and_unload()
    save_model_folder(merged, tok, out / "model")
    shutil.rmtree(out / TRAINER_DIR, ignore_errors=True)

    if evals is not None:
        prompts = [evals[i]["prompt"] for i in range(min(4, len(evals)))]
        answers = sample_answers(merged, tok, prompts)
        log_.log_table(
            {
                "prompt": [p[-1]["content"] for p in prompts],
                "reference": [evals[i]["completion"][-1]["content"] for i in range(len(prompts))],
                "answer": answers,
            },
            "sft/samples.json",
        )
    log_.log_artifact(out / "adapter", "adapter")
    log.info("sft: %s", {k: round(v, 4) for k, v in metrics.items()})
    return StageReport(
        counts={
            "train_pairs": len(train),
            "eval_pairs": len(evals) if evals is not None else 0,
            "steps": trainer.state.global_step,
            "trainable_params": trainable,
            "params": count_parameters(merged),
        },
        metrics=metrics,
        extra={"base_model": str(base), "max_length": trainer.args.max_length},
    )
