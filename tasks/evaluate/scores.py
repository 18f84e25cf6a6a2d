"""Scores that need no model: reference-based scores (ROUGE-L, token F1), the best constant answer,
diversity (distinct responses, distinct-2), paired bootstrap intervals and the stratified prompt sample.

Plain Python and numpy, so the gates and their tests can use them without torch. ROUGE-L here equals
`rouge_score`'s ROUGE-L F-measure (same tokenizer: lowercased alphanumeric words, no stemming; a test
checks it) but works on tokens tokenized once, which makes choosing a constant answer over hundreds of
candidates and references cheap.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Tokens = tuple[str, ...]
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def words(text: str) -> Tokens:
    """rouge_score's default tokenizer: lowercase, split on anything not [a-z0-9]."""
    return tuple(w for w in _NON_ALNUM.sub(" ", text.lower()).split() if w)


# --- reference-based scores ---------------------------------------------------------------------------


def match_masks(a: Tokens) -> dict[str, int]:
    """For each word of `a`, the bit mask of its positions: what `lcs_length` reads of `a`."""
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | (1 << i)
    return masks


def lcs_length(a: Tokens, b: Tokens, masks: dict[str, int] | None = None) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyro 2004): one pass over `b` with a
    few integer operations per word, ~10x faster in Python than the dynamic programme, which matters
    when the constant answer is chosen over ~10^5 pairs. `masks` = `match_masks(a)`, when reused."""
    masks = match_masks(a) if masks is None else masks
    full = (1 << len(a)) - 1
    v = full
    for word in b:
        u = v & masks.get(word, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def f_measure(overlap: float, n_prediction: int, n_reference: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / n_prediction, overlap / n_reference
    return 2 * precision * recall / (precision + recall)


def rouge_l_tokens(reference: Tokens, prediction: Tokens, masks: dict[str, int] | None = None) -> float:
    """ROUGE-L F-measure of two tokenized texts (0 when either is empty, as in rouge_score); `masks` =
    `match_masks(reference)`, when reused."""
    if not reference or not prediction:
        return 0.0
    return f_measure(lcs_length(reference, prediction, masks), len(prediction), len(reference))


def token_f1_tokens(reference: Tokens, prediction: Tokens) -> float:
    """SQuAD-style token F1: the bag-of-words overlap of the two texts (1 when both are empty)."""
    return token_f1_counts(Counter(reference), Counter(prediction))


def token_f1_counts(reference: Counter[str], prediction: Counter[str]) -> float:
    """`token_f1_tokens` on word counts (built once when one text meets many)."""
    n_ref, n_pred = reference.total(), prediction.total()
    if not n_ref or not n_pred:
        return float(n_ref == n_pred)
    overlap = sum(min(n, reference[w]) for w, n in prediction.items())
    return f_measure(overlap, n_pred, n_ref)


REFERENCE_SCORES: dict[str, Callable[[Tokens, Tokens], float]] = {
    "rouge_l": rouge_l_tokens,
    "token_f1": token_f1_tokens,
}


def rouge_l(reference: str, prediction: str) -> float:
    return rouge_l_tokens(words(reference), words(prediction))


def token_f1(reference: str, prediction: str) -> float:
    return token_f1_tokens(words(reference), words(prediction))


def score_all(score: str, references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """One reference score (a key of REFERENCE_SCORES) per (reference, prediction) pair."""
    fn = REFERENCE_SCORES[score]
    return [fn(words(r), words(p)) for r, p in zip(references, predictions, strict=True)]


# --- the best constant answer -------------------------------------------------------------------------


@dataclass(frozen=True)
class ConstantAnswer:
    """The one answer that, given to every training prompt, scores best on one reference score."""

    score: str  # a key of REFERENCE_SCORES
    text: str
    train_score: float  # its mean score over the training references it was chosen on
    candidates: int


def constant_candidates(
    generic: Sequence[str], train_answers: Sequence[str], common: int, sampled: int, seed: int
) -> list[str]:
    """What a policy that ignores its prompt could answer: the stock answers, the `common` most frequent
    training answers, and `sampled` other training answers (seeded), without duplicates.

    The training answers matter: a collapsed policy usually repeats a typical training sentence, and
    one of those is often a better constant than any stock phrase.
    """
    frequent = [a for a, _ in Counter(train_answers).most_common(common)]
    rng = random.Random(seed)
    pool = sorted(set(train_answers))
    others = rng.sample(pool, min(sampled, len(pool)))
    return list(dict.fromkeys([*generic, *frequent, *others]))


def best_constant(score: str, candidates: Sequence[str], references: Sequence[str]) -> ConstantAnswer:
    """The candidate with the highest mean `score` against `references` (ties: the first candidate)."""
    if not candidates or not references:
        raise ValueError("the best constant answer needs candidates and training references")
    if score not in REFERENCE_SCORES:
        raise ValueError(f"unknown reference score {score!r}; choose from {', '.join(REFERENCE_SCORES)}")
    refs = [words(r) for r in references]
    cands = [words(c) for c in candidates]
    cand_counts = [Counter(c) for c in cands]
    totals = [0.0] * len(cands)
    for ref in refs:  # what depends on the reference alone is built once for every candidate
        if score == "rouge_l":
            masks = match_masks(ref)
            row = [rouge_l_tokens(ref, c, masks) for c in cands]
        else:
            ref_counts = Counter(ref)
            row = [token_f1_counts(ref_counts, c) for c in cand_counts]
        totals = [t + x for t, x in zip(totals, row, strict=True)]
    best = max(range(len(cands)), key=lambda i: (totals[i], -i))  # ties: the first candidate
    return ConstantAnswer(score, candidates[best], totals[best] / len(refs), len(candidates))


# --- diversity ----------------------------------------------------------------------------------------


def distinct_rate(responses: Sequence[str]) -> float:
    """Distinct responses / responses (whitespace-normalised text): 1/n for a policy that always says
    the same thing, 1 when every prompt gets its own answer."""
    if not responses:
        return float("nan")
    return len({" ".join(r.split()) for r in responses}) / len(responses)


def distinct_n(responses: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams / n-grams over all responses (Li et al., 2016), on lowercased words; 0 when the
    responses hold no n-gram at all."""
    grams = [g for r in responses for g in zip(*(words(r)[i:] for i in range(n)), strict=False)]
    return len(set(grams)) / len(grams) if grams else 0.0


# --- paired bootstrap ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def bootstrap_mean(values: Sequence[float], samples: int, seed: int, level: float = 0.95) -> Interval:
    """The mean of per-prompt `values` and its percentile bootstrap interval.

    Paired comparisons pass per-prompt differences (or win indicators), so each resample keeps a
    prompt's two answers together: the interval reflects which prompts were drawn, the dominant source
    of noise with a few hundred prompts.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        nan = float("nan")
        return Interval(nan, nan, nan)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(samples, arr.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(arr.mean()), float(low), float(high))


def wins(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per prompt: 1 when `a` scores higher, 0.5 on a tie, 0 otherwise."""
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)]


def differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


# --- stratified sample --------------------------------------------------------------------------------


def allocate(sizes: dict[Hashable, int], n: int) -> dict[Hashable, int]:
    """How many of `n` draws each stratum gets: proportional to its size (largest remainder), at least
    one per stratum while `n` allows, never more than the stratum holds."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    exact = {k: n * s / total for k, s in sizes.items()}
    take = {k: min(sizes[k], max(1 if n >= len(sizes) else 0, int(v))) for k, v in exact.items()}
    by_remainder = sorted(sizes, key=lambda k: (exact[k] - int(exact[k]), sizes[k]), reverse=True)
    while sum(take.values()) > n:  # the one-per-stratum floor overshot: trim the most over-allocated
        biggest = max((k for k in take if take[k] > 1), key=lambda k: (take[k] - exact[k], take[k]))
        take[biggest] -= 1
    i = 0
    while sum(take.values()) < n:
        k = by_remainder[i % len(by_remainder)]
        if take[k] < sizes[k]:
            take[k] += 1
        i += 1
    return take


def stratified_sample(strata: Sequence[Hashable], n: int, seed: int) -> list[int]:
    """Indices of a seeded sample of `n` items, stratified by `strata[i]` (proportional allocation),
    in their original order; every index when there are no more than `n` items."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    take = allocate({k: len(v) for k, v in groups.items()}, n)
    rng = random.Random(seed)
    chosen: list[int] = []
    for key in sorted(groups, key=str):
        chosen += rng.sample(groups[key], take[key])
    return sorted(chosen)
