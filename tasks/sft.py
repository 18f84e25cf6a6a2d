"""Stage `sft`: supervised fine-tuning of the pretrained model on align_data's instruction pairs.

trl's `SFTTrainer` with a peft LoRA adapter. The pairs are conversational prompt-completion records,
rendered with the tokenizer's chat template; trl builds labels with the prompt tokens set to -100, so
the loss covers only the answer (and its closing EOS, which teaches the model to stop).

Outputs: `adapter/` (the LoRA adapter + tokenizer) and `model/` (the adapter merged into the base
weights with `merge_and_unload`, + tokenizer): the reward model and PPO start from `model/`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from conf.sft import SftConfig
from tasks.common.alignment import SFT_FILES
from tasks.common.artifacts import Manifest
from tasks.common.generation import chat_prompt_ids, generate_batched, generation_config
from tasks.common.hf_callback import MetricLoggerCallback
from tasks.common.models import (
    count_parameters,
    has_cuda,
    load_causal_lm,
    load_tokenizer,
    model_dir,
    save_model_folder,
    torch_threads,
)
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.common.training import (
    load_records,
    loop_args,
    lora_config,
    loss_ends,
    remove_trainer_dir,
    save_adapter,
    warn_if_longer_than_trained,
)

log = logging.getLogger(__name__)
STAGE_VERSION = 1


def check_target_modules(model: Any, names: list[str]) -> None:
    """Fail on target modules that match nothing (peft would train no adapter), warn on partial matches."""
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [n for n in names if n not in present]
    if len(missing) == len(names):
        raise ValueError(
            f"sft.target_modules {names} match no module of the model; it has e.g. "
            f"{', '.join(sorted(p for p in present if 'proj' in p)[:10])}"
        )
    if missing:
        log.warning("sft.target_modules not in the model (ignored by LoRA): %s", ", ".join(missing))


def sample_answers(model: Any, tok: Any, prompts: list[list[dict]], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers to a few prompts, for a human look in MLflow (one at a time: no padding)."""
    model.eval()
    gen = generation_config(tok.eos_token_id, tok.pad_token_id, max_new_tokens)
    answers = generate_batched(model, [chat_prompt_ids(tok, p) for p in prompts], gen, batch_size=1)
    return tok.batch_decode(answers, skip_special_tokens=True)


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
    lora = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
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
    train, evals = read_pairs(cfg, inputs["align_data"])
    callback = MetricLoggerCallback(log_)
    trainer = build_trainer(cfg, model, tok, train, evals, out, [callback])
    metrics = fit(trainer, evals is not None, callback)
    trainable = count_parameters(trainer.model, trainable_only=True)
    merged = save_outputs(trainer.model, tok, out)
    if evals is not None:
        log_.log_table(sample_table(merged, tok, evals), "sft/samples.json")
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


def read_pairs(cfg: SftConfig, align: Manifest) -> tuple[Any, Any]:
    """(train, eval) prompt-completion datasets; eval is None when align_data held none out."""
    columns = ["prompt", "completion"]
    train = load_records(align, SFT_FILES["train"], cfg.max_train_samples, columns)
    evals = load_records(align, SFT_FILES["eval"], cfg.max_eval_samples, columns)
    if train is None:
        raise ValueError(f"align_data ({align.path}) has no SFT training pairs in {SFT_FILES['train']}")
    return train, evals


def fit(trainer: Any, evaluate: bool, callback: MetricLoggerCallback) -> dict[str, float]:
    """Train, measuring the held-out loss before and after (when there is held-out data) and the speed."""
    metrics: dict[str, float] = {}
    if evaluate:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    started = time.perf_counter()
    result = trainer.train()
    metrics["train_seconds"] = time.perf_counter() - started
    metrics["train_loss"] = result.training_loss
    if evaluate:
        final = trainer.evaluate()
        metrics["eval_loss"] = final["eval_loss"]
        if "eval_mean_token_accuracy" in final:
            metrics["eval_token_accuracy"] = final["eval_mean_token_accuracy"]
    metrics.update(loss_ends(callback))
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    if tokens:
        metrics["tokens_per_s"] = tokens / metrics["train_seconds"]
    return metrics


def save_outputs(peft_model: Any, tok: Any, out: Path) -> Any:
    """Write `adapter/` (adapter + tokenizer) and `model/` (merged + tokenizer); returns the merged model."""
    save_adapter(peft_model, tok, out / "adapter")
    merged = peft_model.merge_and_unload()
    save_model_folder(merged, tok, out / "model")
    remove_trainer_dir(out)
    return merged


def sample_table(model: Any, tok: Any, evals: Any, n: int = 4) -> dict[str, list]:
    """The first `n` held-out prompts with their reference and the tuned model's greedy answer."""
    rows = [evals[i] for i in range(min(n, len(evals)))]
    prompts = [r["prompt"] for r in rows]
    return {
        "prompt": [p[-1]["content"] for p in prompts],
        "reference": [r["completion"][-1]["content"] for r in rows],
        "answer": sample_answers(model, tok, prompts),
    }
