"""Reward-model loading and scoring, written once: the reward and judge stages (their held-out accuracy),
PPO (the reward of each rollout) and the evaluate stage (win rate, accuracy) must read the same number
for the same conversation, or a gain measured in one would not be the gain trained for in the other.

A conversation is rendered with the chat template exactly as trl's `RewardTrainer` renders its training
pairs (so an answer ends with EOS), and the reward is the score head's output at the last real token.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tasks.common.alignment import GENERIC_ANSWERS
from tasks.common.generation import Messages


def load_reward_model(path: Path, tokenizer: Any = None) -> Any:
    """A sequence-classification model with one output from a model folder (a causal LM gets a new head).

    With `tokenizer`, its pad id goes into the model config: the model finds each sequence's last real
    token by that id, so it must be the id batches are padded with.
    """
    from transformers import AutoModelForSequenceClassification

    suppress_seqcls_warning: Callable[[], contextlib.AbstractContextManager[object]]
    try:  # a causal LM folder has lm_head and no score head: expected, so trl's helper quiets that report
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:  # pragma: no cover - moved in another trl version
        suppress_seqcls_warning = contextlib.nullcontext
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=torch.float32, local_files_only=True
        )
    if tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def conversation_ids(tokenizer: Any, conversations: Sequence[Messages]) -> list[list[int]]:
    """Token ids of each whole conversation rendered by the chat template (no generation prompt)."""
    return [
        list(tokenizer.apply_chat_template(list(c), tokenize=True, return_dict=True)["input_ids"])
        for c in conversations
    ]


@torch.no_grad()
def score_conversations(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Messages],
    batch_size: int = 32,
    max_length: int | None = None,
) -> tuple[list[float], int]:
    """(rewards, number truncated): each conversation rendered with the chat template, scored in batches.

    Longer conversations keep their last `max_length` tokens: the reward is read at the last token, so
    the answer's end must stay in. Batches group similar lengths (less padding); padding never changes
    a score, so the order only affects speed.
    """
    was_training = model.training
    model.eval()
    seqs = conversation_ids(tokenizer, conversations)
    truncated = 0
    if max_length:
        truncated = sum(len(s) > max_length for s in seqs)
        seqs = [s[-max_length:] for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    scores = [0.0] * len(seqs)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
        for row, i in enumerate(idx):
            scores[i] = float(logits[row])
    model.train(was_training)
    return scores, truncated


def with_answers(prompts: Sequence[Messages], answers: Sequence[str]) -> list[Messages]:
    """Each prompt followed by its answer as the assistant's turn: what the reward model reads."""
    return [list(p) + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)]


def evaluate_pairs(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 32,
    max_length: int | None = None,
) -> dict[str, float]:
    """Accuracy (chosen scored above rejected), mean margin and rewards, and accuracy per `rejected_kind`
    (`accuracy_<kind>`) of preference rows."""
    convs = [r["prompt"] + r["chosen"] for r in records] + [r["prompt"] + r["rejected"] for r in records]
    scores, truncated = score_conversations(model, tokenizer, convs, batch_size, max_length)
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


def prefers_reference_over_generic(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Messages],
    references: Sequence[str],
    batch_size: int = 32,
    max_length: int | None = None,
) -> float:
    """Share of prompts where the reference answer scores above the best-scoring stock answer
    (`GENERIC_ANSWERS`): a reward model below ~1 would pay a policy for saying nothing."""
    k = len(GENERIC_ANSWERS)
    convs = []
    for prompt, reference in zip(prompts, references, strict=True):
        convs += with_answers([prompt] * (k + 1), [reference, *GENERIC_ANSWERS])
    scores, _ = score_conversations(model, tokenizer, convs, batch_size, max_length)
    rows = [scores[i : i + k + 1] for i in range(0, len(scores), k + 1)]
    return sum(row[0] > max(row[1:]) for row in rows) / max(len(rows), 1)


class RewardModelScorer:
    """A reward model with its tokenizer, truncation length and batch size: scores conversations, or
    (prompt, answer) pairs as PPO's score function (`tasks.ppo.rollout.ScoreFn`)."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int | None = None, batch_size: int = 32):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the reward model's tokenizer has no chat_template; the reward stage must save one"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.batch_size = batch_size

    def score(self, conversations: Sequence[Messages]) -> list[float]:
        """The reward of each whole conversation."""
        scores, _ = score_conversations(
            self.model, self.tokenizer, conversations, self.batch_size, self.max_length
        )
        return scores

    def __call__(
        self, prompts: Sequence[Messages], completions: Sequence[str], response_ids: Any = None
    ) -> torch.Tensor:
        """Rewards [B] of each prompt answered by its completion (`response_ids` unused: text is scored)."""
        return torch.tensor(self.score(with_answers(prompts, completions)), dtype=torch.float32)
