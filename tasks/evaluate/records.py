"""What the evaluate stage's steps hand each other: the held-out data, the policies' answers, the
reference scores, a reward model's judgement; and the small helpers they share (a row's text and
package, means with bootstrap intervals).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conf.evaluate import EvaluateConfig
from tasks.common.alignment import top_package
from tasks.common.generation import Messages
from tasks.evaluate import scores

CONSTANT = "constant"  # the best constant answer, scored beside the policies


@dataclass
class EvalData:
    """The held-out rows of align_data this stage reads, and the training answers the constant answer
    is chosen on."""

    prompts_path: Path
    rows: list[dict]  # the sample of sft/eval.jsonl: prompt + reference completion
    available: int  # rows in sft/eval.jsonl
    pairs: list[dict]  # the sample of prefs/eval.jsonl: prompt + chosen + rejected (+ rejected_kind)
    train_answers: list[str]  # reference answers of sft/train.jsonl (a seeded sample)
    sample_prompts: list[str]  # the decoding table's prompts

    def prompts(self) -> list[Messages]:
        return [r["prompt"] for r in self.rows]

    def prompt_texts(self) -> list[str]:
        return [content(r["prompt"], self.prompts_path, "prompt") for r in self.rows]

    def references(self) -> list[str]:
        return [content(r["completion"], self.prompts_path, "completion") for r in self.rows]


@dataclass
class Answers:
    """Each policy's greedy answers to the sampled prompts (token ids and text, by model name), and the
    per-response log PPO - log SFT of the KL estimate."""

    tokens: dict[str, list[list[int]]]
    texts: dict[str, list[str]]
    kls: list[float]


@dataclass
class References:
    """Reference-based scores per prompt: `scores[score][model]` (models plus `constant`), and the
    constant answer each score chose on the training split."""

    constants: dict[str, scores.ConstantAnswer]
    scores: dict[str, dict[str, list[float]]]


@dataclass
class Judgement:
    """One reward model's scores: each answer set (by model name, and the constant answer) per prompt,
    the held-out pairs, and per prompt the reference answer and the best-scored stock answer."""

    rewards: dict[str, list[float]]
    chosen: list[float]
    rejected: list[float]
    reference: list[float]
    best_generic: list[float]


def content(messages: list[dict], path: Path, key: str) -> str:
    """The text of the last chat message of a row's field (`prompt`, `completion`), checked."""
    if not isinstance(messages, list) or not messages or "content" not in messages[-1]:
        raise ValueError(f"{path}: field {key!r} must be a list of chat messages, got {messages!r:.80}")
    return str(messages[-1]["content"])


def package(row: dict) -> str:
    """A row's top-level package (`email` for `email.mime.text`): the unit the prompt sample is
    stratified by, since align_data holds out whole packages."""
    return top_package(str(row.get("module") or row.get("id") or ""))


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def interval(name: str, per_prompt: list[float], cfg: EvaluateConfig) -> dict[str, float]:
    """`name` (the mean) with `name_ci_low`/`name_ci_high`: a seeded paired bootstrap 95% interval."""
    ci = scores.bootstrap_mean(per_prompt, cfg.bootstrap_samples, cfg.seed)
    return {name: ci.value, f"{name}_ci_low": ci.low, f"{name}_ci_high": ci.high}
