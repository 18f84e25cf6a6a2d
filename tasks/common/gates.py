"""The evaluate stage's quality gates: checks on its metrics that catch a collapsed or reward-hacked
policy, each failure naming its config key, the metric and by how much it missed. Shared because
`export` re-checks them (with the thresholds evaluate logged) before it sets the `champion` alias.

No gate reads a number the policy's own reward model produced (`eval/reward_*`,
`eval/win_rate_ppo_vs_sft`): PPO optimised against that model, so its verdict is what a hacked policy
improves. The win-rate gate reads the independent judge; the others need no reward model at all.
`eval/rm_accuracy` is a check of the reward model on held-out labels, not of the policy.

Plain Python (no torch): the registry imports the stage package, and tests call `failures` directly on
metrics built from hand-made answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from conf.evaluate import EvaluateConfig

# Reference scores the policy must beat the best constant answer on (eval/<score>_ppo vs _constant).
CONSTANT_SCORES = ("rouge_l", "token_f1")
SELF_JUDGED = ("eval/reward_", "eval/win_rate_", "eval/rm_margin")


@dataclass(frozen=True)
class Bound:
    """`metric` must stay at or above (`min`) or at or below (`max`) the config value `key`."""

    key: str
    metric: str
    kind: Literal["min", "max"]


BOUNDS = (
    Bound("min_distinct_ppo", "eval/distinct_ppo", "min"),
    Bound("max_ppl_ratio", "eval/ppl_ratio_ppo_sft", "max"),
    Bound("max_kl", "eval/kl_ppo_sft", "max"),
    Bound("min_win_rate", "eval/judge_win_rate_ppo_vs_sft", "min"),
    Bound("min_rm_accuracy", "eval/rm_accuracy", "min"),
    Bound("max_ppl_ppo", "eval/ppl_ppo", "max"),
)


def gated_metrics() -> list[str]:
    """Every metric some gate reads (the test that no gate passes on a self-judged number uses it)."""
    return [b.metric for b in BOUNDS] + [
        f"eval/{s}_{m}" for s in CONSTANT_SCORES for m in ("ppo", "constant")
    ]


def check_bound(bound: Bound, limit: float, metrics: Mapping[str, float]) -> str | None:
    value = metrics.get(bound.metric)
    if value is None:
        return f"evaluate.{bound.key}: {bound.metric} was not measured"
    if bound.kind == "min" and not value >= limit:
        return f"evaluate.{bound.key}: {bound.metric}={value:.4g} is below {limit} by {limit - value:.4g}"
    if bound.kind == "max" and not value <= limit:
        return f"evaluate.{bound.key}: {bound.metric}={value:.4g} exceeds {limit} by {value - limit:.4g}"
    return None


def check_constant(score: str, margin: float, metrics: Mapping[str, float]) -> str | None:
    """The PPO policy must score strictly more than `margin` above the best constant answer: a policy
    that answers everything with that constant (or anything no better) fails."""
    policy, constant = f"eval/{score}_ppo", f"eval/{score}_constant"
    if policy not in metrics or constant not in metrics:
        return f"evaluate.min_margin_over_constant: {policy} or {constant} was not measured"
    gap = metrics[policy] - metrics[constant]
    if gap > margin:
        return None
    return (
        f"evaluate.min_margin_over_constant: {policy}={metrics[policy]:.4g} is {gap:+.4g} over the best "
        f"constant answer ({constant}={metrics[constant]:.4g}); it must be more than {margin:+.4g} "
        f"(short by {margin - gap:.4g})"
    )


def failures(cfg: EvaluateConfig, metrics: Mapping[str, float]) -> list[str]:
    """One message per failed gate (None thresholds are off)."""
    found = []
    for bound in BOUNDS:
        limit = getattr(cfg, bound.key)
        if limit is not None:
            found.append(check_bound(bound, limit, metrics))
    if cfg.min_margin_over_constant is not None:
        found += [check_constant(s, cfg.min_margin_over_constant, metrics) for s in CONSTANT_SCORES]
    return [f for f in found if f]
