"""Stage `evaluate`: the pretrained, SFT and PPO models side by side on held-out data.

- perplexity and bits per byte on the validation token shards (`eval/ppl_*`, `eval/bpb_*`);
- on eval-split prompts (whole modules never trained on): ROUGE-L against the reference summaries,
  mean reward-model score, PPO-vs-SFT win rate judged by the reward model, KL(PPO || SFT);
- reward-model accuracy on held-out preference pairs;
- a table of sample generations under several decoding strategies, and comparison plots;
- optionally, lm-evaluation-harness tasks (off by default: they download data).
"""

from __future__ import annotations

from pathlib import Path

from conf.evaluate import EvaluateConfig
from tasks.common.artifacts import Manifest
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger

STAGE_VERSION = 1
INPUTS = ("tokenizer", "pretrain", "sft", "reward", "ppo", "align_data")
MODELS = {"base": "pretrain", "sft": "sft", "ppo": "ppo"}  # model name -> stage holding its model/
METRIC_NAMES = (
    "eval/ppl_base",
    "eval/ppl_sft",
    "eval/ppl_ppo",
    "eval/bpb_base",
    "eval/bpb_sft",
    "eval/bpb_ppo",
    "eval/rouge_l_sft",
    "eval/rouge_l_ppo",
    "eval/rm_accuracy",
    "eval/reward_sft",
    "eval/reward_ppo",
    "eval/win_rate_ppo_vs_sft",
    "eval/kl_ppo_sft",
)


def evaluate(cfg: EvaluateConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    """The stage function; torch and transformers load only when it runs (the registry imports this
    module)."""
    from tasks.evaluate.stage import run

    return run(cfg, inputs, out, log_)


def gate(cfg: EvaluateConfig, manifest: Manifest) -> str | None:
    """Quality gates on the held-out metrics; each failure names its config key."""
    m = manifest.metrics
    checks = [
        ("min_rm_accuracy", "eval/rm_accuracy", cfg.min_rm_accuracy, lambda v, t: v >= t, "<"),
        ("min_win_rate", "eval/win_rate_ppo_vs_sft", cfg.min_win_rate, lambda v, t: v >= t, "<"),
        ("max_kl", "eval/kl_ppo_sft", cfg.max_kl, lambda v, t: v <= t, ">"),
        ("max_ppl_ppo", "eval/ppl_ppo", cfg.max_ppl_ppo, lambda v, t: v <= t, ">"),
    ]
    failures = [
        f"evaluate.{key}: {metric}={m[metric]:.4g} {op} {limit}"
        for key, metric, limit, ok, op in checks
        if limit is not None and metric in m and not ok(m[metric], limit)
    ]
    return "; ".join(failures) or None
