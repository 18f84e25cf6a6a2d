"""Stage `ppo`: alignment of the SFT policy, then a held-out comparison with SFT.

`algorithm: ppo` (default) runs our PPO trainer (tasks/ppo/trainer.py); `grpo` and `rloo` run trl's
trainers with the same reward model, prompts, LoRA adapter and outputs, so the three compare in MLflow
on the same metrics (`reward_ppo_eval`, `reward_gain`, `kl_ref_eval`, curves `ppo/score` ...). `dpo` runs
trl's DPOTrainer on the pairs the reward model trained on (align_data's `rm` role), with the same LoRA
adapter on the SFT model (reference = adapter off), and ends with the same held-out comparison and
outputs, so the gate, `evaluate` and `make align-compare` treat all four alike.

Prompts: the RL algorithms optimise on align_data's `ppo` role (`PPO_PROMPTS`), prompts neither reward
model has seen; an align_data folder from before that role falls back to the SFT training prompts, with a
warning.

Outputs: `adapter/` (the LoRA adapter + tokenizer), `model/` (merged policy + tokenizer),
`metrics.json`, `eval_samples.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from conf.ppo import PpoConfig
from tasks.common import launch as torchrun
from tasks.common.alignment import PPO_PROMPTS, SFT_FILES
from tasks.common.artifacts import Manifest, read_manifest
from tasks.common.generation import Messages
from tasks.common.hf_callback import MetricLoggerCallback
from tasks.common.jsonl import iter_jsonl
from tasks.common.models import load_causal_lm, load_tokenizer, model_dir, save_model_folder
from tasks.common.reward_model import RewardModelScorer, load_reward_model
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger, MlflowLogger
from tasks.common.training import lora_config as causal_lm_lora
from tasks.common.training import save_adapter, trainer_args
from tasks.ppo.dpo import load_pairs, train_dpo
from tasks.ppo.trainer import PPOTrainer, heldout_eval, make_accelerator

log = logging.getLogger(__name__)
STAGE_VERSION = 2  # 2: prompts of the ppo role, top-k/top-p log-probs, lr/KL-horizon defaults, dpo
REPORT_NAME = "metrics.json"


# ---- inputs ---------------------------------------------------------------------------------
def read_prompts(manifest: Manifest, name: str) -> list[Messages]:
    """The `prompt` messages of align_data's `name` (trl conversational JSONL)."""
    path = manifest.file(name)
    prompts = []
    for lineno, rec in iter_jsonl(path):
        prompt = rec.get("prompt") if isinstance(rec, dict) else None
        if not (isinstance(prompt, list) and prompt and prompt[-1].get("role") == "user"):
            raise ValueError(f"{path}:{lineno}: 'prompt' must be a list of messages ending with a user turn")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path} holds no prompts; check the align_data stage")
    return prompts


def training_prompts(manifest: Manifest) -> list[Messages]:
    """The prompts the RL algorithms optimise on: align_data's `ppo` role, which neither reward model saw.

    An align_data folder written before that role existed has no such file: its SFT training prompts are
    used instead (the reward model has seen them, with their gold answers), and the run says so.
    """
    if PPO_PROMPTS in manifest.files:
        return read_prompts(manifest, PPO_PROMPTS)
    log.warning(
        "align_data (%s) has no %s: training on the SFT prompts (%s) instead, which the reward model has "
        "seen with their reference answers; rerun align_data for prompts of the ppo role",
        manifest.path,
        PPO_PROMPTS,
        SFT_FILES["train"],
    )
    return read_prompts(manifest, SFT_FILES["train"])


def check_same_vocab(policy_tok, reward_tok, sft_dir: Path, reward_dir: Path) -> None:
    """The value model (a copy of the reward model) reads the policy's token ids: the vocabularies must
    match."""
    if policy_tok.get_vocab() != reward_tok.get_vocab():
        raise ValueError(
            f"the policy tokenizer ({sft_dir}) and the reward model's tokenizer ({reward_dir}) differ; "
            "PPO initialises its value model from the reward model, so both must use the same tokenizer"
        )


def lora_config(cfg: PpoConfig):
    """The policy's adapter, the kind SFT trains; disabled, the policy is the SFT model (the reference)."""
    return causal_lm_lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)


# ---- the stage --------------------------------------------------------------------------------
def ppo(cfg: PpoConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    if cfg.num_processes > 1:
        return launch(cfg, inputs, out, log_)
    threads = torch.get_num_threads()
    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)
    try:
        report = train(cfg, inputs, out, log_)
    finally:
        torch.set_num_threads(threads)
    assert report is not None
    return report


def train(cfg: PpoConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport | None:
    """Train in this process (one of several under torchrun); the main process writes the outputs."""
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(model_dir(inputs["sft"]))
    tok.padding_side = "left"
    eval_prompts = read_prompts(inputs["align_data"], SFT_FILES["eval"])
    acc = make_accelerator()
    reward_dir = model_dir(inputs["reward"])
    reward_tok = load_tokenizer(reward_dir)
    reward_model = load_reward_model(reward_dir, reward_tok).requires_grad_(False).to(acc.device)
    scorer = RewardModelScorer(reward_model, reward_tok)
    policy, history, counts = align(cfg, inputs, tok, reward_model, reward_tok, scorer, acc, log_)
    if policy is None:
        return None
    return finish(cfg, policy, tok, scorer, eval_prompts, history, counts, out, log_)


def align(cfg: PpoConfig, inputs: dict[str, Manifest], tok, reward_model, reward_tok, scorer, acc, log_):
    """A fresh LoRA adapter on the SFT model, trained by `cfg.algorithm`.

    Returns (peft policy, history, counts) on the main process and (None, history, counts) on the others;
    counts: optimizer steps (RL: rollout steps) and the training rows used.
    """
    base = load_causal_lm(model_dir(inputs["sft"]))
    if cfg.algorithm == "dpo":
        pairs = load_pairs(inputs["align_data"], cfg.max_train_prompts)
        policy, history, steps = train_dpo(cfg, base, tok, pairs, lora_config(cfg), log_)
        return policy, history, {"steps": steps, "train_pairs": len(pairs)}
    prompts = training_prompts(inputs["align_data"])[: cfg.max_train_prompts]
    if cfg.algorithm == "ppo":
        policy, history = train_ppo(cfg, base, tok, inputs, reward_tok, scorer, prompts, acc, log_)
    else:
        policy, history = train_trl(cfg, base, tok, reward_model, reward_tok, prompts, log_)
    return policy, history, {"steps": cfg.steps, "train_prompts": len(prompts)}


def train_ppo(cfg: PpoConfig, base, tok, inputs, reward_tok, scorer, prompts, acc, log_):
    """Our PPO: the value model starts as a copy of the reward model, so it must read the policy's tokens."""
    from peft import get_peft_model

    sft_dir, reward_dir = model_dir(inputs["sft"]), model_dir(inputs["reward"])
    check_same_vocab(tok, reward_tok, sft_dir, reward_dir)
    value = load_reward_model(reward_dir, reward_tok)
    trainer = PPOTrainer(cfg, get_peft_model(base, lora_config(cfg)), tok, value, scorer, prompts, log_, acc)
    history = trainer.train()
    acc.wait_for_everyone()
    return (trainer.unwrapped_policy() if acc.is_main_process else None), history


def finish(
    cfg, policy, tok, scorer, eval_prompts, history, counts: dict[str, int], out: Path, log_: MetricLogger
) -> StageReport:
    """Held-out comparison with the SFT policy, then the adapter, the merged model and the report."""
    save_adapter(policy, tok, out / "adapter")
    metrics, table = heldout_eval(policy, tok, scorer, eval_prompts, cfg)
    (out / "eval_samples.json").write_text(json.dumps(table, indent=1, ensure_ascii=False), encoding="utf-8")
    log_.log_table(table, "ppo/eval_samples.json")
    merged = policy.merge_and_unload()
    tok.padding_side = "right"  # the saved tokenizer's default, as the SFT model's
    save_model_folder(merged, tok, out / "model")
    metrics.update(history_metrics(history))
    log.info(
        "ppo (%s): held-out reward SFT %.4f -> tuned %.4f (gain %.4f), KL to SFT %.3f",
        cfg.algorithm,
        metrics["reward_sft_eval"],
        metrics["reward_ppo_eval"],
        metrics["reward_gain"],
        metrics["kl_ref_eval"],
    )
    report = StageReport(
        counts={**counts, "eval_prompts": int(metrics.pop("eval_prompts"))},
        metrics=metrics,
        extra={"algorithm": cfg.algorithm, "adapter": "adapter", "model": "model"},
    )
    (out / REPORT_NAME).write_text(
        json.dumps({"counts": report.counts, "metrics": report.metrics, "extra": report.extra}, indent=2)
    )
    return report


def history_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """First and last training figures the algorithm logged: `train_score_*` (RL: reward-model score),
    `train_loss_*` / `train_margin_*` (DPO), `kl_coef_last`, `train_kl_last`."""
    if not history:
        return {}
    first, last = history[0], history[-1]
    out = {}
    for key in ("score", "loss", "margin"):
        if key in first and key in last:
            out[f"train_{key}_first"], out[f"train_{key}_last"] = first[key], last[key]
    for key, name in (
        ("kl_coef", "kl_coef_last"),
        ("kl", "train_kl_last"),
        ("accuracy", "train_accuracy_last"),
    ):
        if key in last:
            out[name] = last[key]
    return out


def gate(cfg: PpoConfig, manifest: Manifest) -> str | None:
    m = manifest.metrics
    gain, kl = m.get("reward_gain"), m.get("kl_ref_eval")
    if gain is None or kl is None:
        return "the manifest has no reward_gain / kl_ref_eval metrics (the held-out evaluation did not run)"
    problems = []
    if not gain > cfg.min_reward_gain:
        problems.append(
            f"held-out reward gain over SFT {gain:.4f} (SFT {m.get('reward_sft_eval', float('nan')):.4f} -> "
            f"{cfg.algorithm} {m.get('reward_ppo_eval', float('nan')):.4f}) is not above ppo.min_reward_gain="
            f"{cfg.min_reward_gain}"
        )
    if not kl <= cfg.max_kl:
        problems.append(f"KL to the SFT policy on held-out prompts {kl:.3f} exceeds ppo.max_kl={cfg.max_kl}")
    return "; ".join(problems) or None


# ---- GRPO / RLOO through trl ------------------------------------------------------------------
def train_trl(cfg: PpoConfig, base, tok, reward_model, reward_tok, prompts, log_: MetricLogger):
    """trl's GRPOTrainer/RLOOTrainer with our reward model.

    Returns (peft policy, history) on the main process.
    """
    from datasets import Dataset
    from transformers import TrainerCallback

    if cfg.algorithm == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_rollout = cfg.batch_size // cfg.mini_batch_size * cfg.ppo_epochs  # optimizer steps per rollout batch
    scratch = Path(tempfile.mkdtemp(prefix=f"lmforge-{cfg.algorithm}-"))
    args = Config(
        output_dir=str(scratch),
        seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        # PPO's schedule: `steps` rollouts of batch_size completions, each used for ppo_epochs passes
        # of mini_batch_size minibatches
        max_steps=cfg.steps * per_rollout,
        per_device_train_batch_size=cfg.mini_batch_size // world,
        generation_batch_size=cfg.batch_size,
        num_iterations=cfg.ppo_epochs,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        beta=cfg.init_kl_coef,
        epsilon=cfg.cliprange,
        max_grad_norm=cfg.max_grad_norm,
        disable_dropout=True,
        logging_steps=cfg.log_every * per_rollout,
        remove_unused_columns=False,
        **trainer_args(bf16=False),
    )
    eos_id = tok.eos_token_id
    reward_funcs: list = [reward_model]
    if cfg.missing_eos_penalty:
        penalty = cfg.missing_eos_penalty

        def missing_eos(completion_ids, **_):
            return [0.0 if eos_id in ids else -penalty for ids in completion_ids]

        reward_funcs.append(missing_eos)
    history: list[dict[str, float]] = []
    rm_name = reward_model.config._name_or_path.split("/")[-1]

    class SharedNames(TrainerCallback):
        """trl's logs under the `ppo/...` names the PPO trainer uses, so the algorithms compare in MLflow."""

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or not state.is_world_process_zero or f"rewards/{rm_name}/mean" not in logs:
                return
            shared = {
                "ppo/score": logs.get(f"rewards/{rm_name}/mean"),
                "ppo/kl_per_token": logs.get("kl"),
                "ppo/entropy": logs.get("entropy"),
                "ppo/response_length": logs.get("completions/mean_length"),
                "ppo/policy_clipfrac": logs.get("clip_ratio/region_mean"),
                "ppo/kl_coef": cfg.init_kl_coef,
            }
            row = {k: float(v) for k, v in shared.items() if v is not None}
            log_.log_metrics(row, step=-(-state.global_step // per_rollout))  # the rollout step, as PPO's
            history.append({"score": row["ppo/score"], "kl_coef": cfg.init_kl_coef})

    trainer = Trainer(
        model=base,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tok,
        reward_processing_classes=[reward_tok] + [None] * (len(reward_funcs) - 1),
        peft_config=lora_config(cfg),
        callbacks=[MetricLoggerCallback(log_, prefix=f"{cfg.algorithm}/"), SharedNames()],
    )
    trainer.train()
    shutil.rmtree(scratch, ignore_errors=True)
    if not trainer.accelerator.is_main_process:
        return None, history
    tok.padding_side = "left"
    return trainer.accelerator.unwrap_model(trainer.model), history


# ---- several processes ------------------------------------------------------------------------
def launch(cfg: PpoConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    """Run `train` under torchrun with `cfg.num_processes` ranks; rank 0 writes the outputs and the report."""
    spec = out / ".launch.json.tmp"  # .tmp: left out of the manifest
    spec.write_text(
        json.dumps(
            {
                "config": cfg.model_dump(mode="json"),
                "inputs": {k: m.path for k, m in inputs.items()},
                "out": str(out),
            }
        )
    )
    threads = cfg.cpu_threads or max(1, (os.cpu_count() or 1) // cfg.num_processes)
    env = torchrun.worker_env(threads, log_.run_id, getattr(log_, "tracking_uri", None))
    try:
        with tempfile.TemporaryDirectory(prefix="lmforge-torchrun-") as tmp:
            cmd = torchrun.torchrun_command("tasks.ppo", [str(spec)], cfg.num_processes, Path(tmp))
            torchrun.run_torchrun(cmd, env, Path(tmp), "ppo", log)
    finally:
        spec.unlink(missing_ok=True)
    data = json.loads((out / REPORT_NAME).read_text())
    return StageReport(counts=data["counts"], metrics=data["metrics"], extra=data["extra"])


@record  # a failing rank's exception goes to torchrun's error file, where `launch` reads it
def main(argv: list[str] | None = None) -> None:
    """Entry point of each torchrun rank: `python -m tasks.ppo SPEC.json`."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    cfg = PpoConfig.model_validate(spec["config"])
    inputs = {}
    for name, path in spec["inputs"].items():
        manifest = read_manifest(Path(path))
        if manifest is None:
            raise FileNotFoundError(f"input stage {name} at {path} has no manifest")
        inputs[name] = manifest
    logging.basicConfig(level=logging.INFO)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        train(cfg, inputs, Path(spec["out"]), MlflowLogger.from_env() if rank0 else MetricLogger())
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
