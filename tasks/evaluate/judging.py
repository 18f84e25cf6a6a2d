"""The reward models' judgement of the answers: the policy's own reward model (self-judged: PPO
optimised against it) and the independent judge (trained on other packages' pairs, never optimised
against), both read through `tasks.common.reward_model` exactly as the reward stage and PPO read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conf.evaluate import EvaluateConfig
from tasks.common.alignment import GENERIC_ANSWERS
from tasks.common.models import device, load_tokenizer
from tasks.common.reward_model import RewardModelScorer, load_reward_model, with_answers
from tasks.evaluate import scores
from tasks.evaluate.records import CONSTANT, Answers, EvalData, Judgement, interval, mean


def judge(
    cfg: EvaluateConfig, reward_dir: Path, data: EvalData, answers: Answers, constant: str
) -> Judgement:
    """One reward model's scores of every answer set (the constant answer included), of the held-out
    pairs, and of the reference against each stock answer; read as the reward stage and PPO read them."""
    tok = load_tokenizer(reward_dir)
    model = load_reward_model(reward_dir, tok).to(device())
    scorer = RewardModelScorer(model, tok, cfg.max_rm_tokens, cfg.batch_size)
    prompts = data.prompts()
    n = len(prompts)
    answer_sets = {**answers.texts, CONSTANT: [constant] * n, "reference": data.references()}
    answer_sets.update({f"generic{i}": [g] * n for i, g in enumerate(GENERIC_ANSWERS)})
    convs = [c for texts in answer_sets.values() for c in with_answers(prompts, texts)]
    convs += [r["prompt"] + r[side] for side in ("chosen", "rejected") for r in data.pairs]
    flat = scorer.score(convs)
    scored = {name: flat[i * n : (i + 1) * n] for i, name in enumerate(answer_sets)}
    pairs = flat[len(answer_sets) * n :]
    generic = np.max([scored.pop(f"generic{i}") for i in range(len(GENERIC_ANSWERS))], axis=0)
    reference = scored.pop("reference")
    half = len(data.pairs)
    return Judgement(scored, pairs[:half], pairs[half:], reference, [float(g) for g in generic])


def alignment_metrics(data: EvalData, answers: Answers, judged: Judgement) -> dict[str, float]:
    """The policy's own reward model (self-judged: PPO optimised against it): reward, PPO's win rate over
    SFT (ties count half), KL, its accuracy on held-out pairs overall and per rejected kind, and how often
    it prefers the reference answer to the best stock answer."""
    rewards, chosen, rejected = judged.rewards, judged.chosen, judged.rejected
    out = {f"eval/reward_{name}": mean(values) for name, values in rewards.items()}
    out.update(
        {
            "eval/win_rate_ppo_vs_sft": mean(scores.wins(rewards["ppo"], rewards["sft"])),
            "eval/kl_ppo_sft": mean(answers.kls),
            "eval/rm_accuracy": mean([float(c > r) for c, r in zip(chosen, rejected, strict=True)]),
            "eval/rm_margin": mean(scores.differences(chosen, rejected)),
            "eval/rm_prefers_reference_over_generic": prefers_reference(judged),
        }
    )
    out.update(accuracy_by_kind(data.pairs, chosen, rejected))
    return out


def accuracy_by_kind(pairs: list[dict], chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """`eval/rm_accuracy_<kind>` for every rejected kind among the pairs: an overall accuracy can hide a
    kind the reward model cannot tell apart (the one a policy then exploits)."""
    by_kind: dict[str, list[float]] = {}
    for r, c, j in zip(pairs, chosen, rejected, strict=True):
        by_kind.setdefault(str(r.get("rejected_kind") or "unknown"), []).append(float(c > j))
    return {f"eval/rm_accuracy_{kind}": mean(v) for kind, v in sorted(by_kind.items())}


def prefers_reference(judged: Judgement) -> float:
    """Share of prompts where the reference answer scores above every stock answer."""
    return mean([float(r > g) for r, g in zip(judged.reference, judged.best_generic, strict=True)])


def judge_metrics(cfg: EvaluateConfig, judged: Judgement) -> dict[str, float]:
    """The independent judge (trained on other packages' pairs, never optimised against): reward per
    policy and for the constant answer, PPO's win rate and reward delta over SFT with bootstrap
    intervals, and the judge's own held-out accuracy."""
    rewards = judged.rewards
    out = {f"eval/judge_reward_{name}": mean(values) for name, values in rewards.items()}
    out.update(interval("eval/judge_win_rate_ppo_vs_sft", scores.wins(rewards["ppo"], rewards["sft"]), cfg))
    out.update(
        interval("eval/judge_reward_delta_ppo_sft", scores.differences(rewards["ppo"], rewards["sft"]), cfg)
    )
    out["eval/judge_win_rate_ppo_vs_constant"] = mean(scores.wins(rewards["ppo"], rewards[CONSTANT]))
    out["eval/judge_accuracy"] = mean(
        [float(c > r) for c, r in zip(judged.chosen, judged.rejected, strict=True)]
    )
    out["eval/judge_prefers_reference_over_generic"] = prefers_reference(judged)
    return out
