"""PPO's tensor math, free of models and I/O so each piece is checked against hand-computed values.

Conventions: tensors are `[batch, response_len]`; `mask` is 1.0 on real response tokens (up to and
including the first EOS) and 0.0 on the padding after it (`tasks.common.generation.response_mask`).
Follows the RLHF recipe of Ziegler et al. (2019), InstructGPT and "The N implementation details of RLHF
with PPO" (Huang et al., 2024).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits` ([B, T, V] and [B, T] -> [B, T])."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's token distribution ([B, T, V] -> [B, T]); tokens filtered out by top-k /
    top-p (logit -inf, probability 0) add nothing instead of 0 * -inf = NaN."""
    logp = F.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi || ref) of each position's full distribution ([B, T, V] x2 -> [B, T])."""
    logp, ref_logp = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL estimate from sampled tokens' log-probs (Schulman's k1/k2/k3 estimators)."""
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":  # unbiased, can be negative per token; what the RLHF reward uses
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":  # unbiased and non-negative
        return (-log_ratio).exp() - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the real tokens only (padding would pull every statistic towards zero)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the real tokens (Bessel-corrected by default), for whitening."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean).square(), mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise the masked entries to unit variance (and zero mean when `shift_mean`)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL(k1) on every real token, plus the score on the last one.

    Returns (rewards, kl) with both zero on padding.
    """
    kl = kl_estimate(logprobs, ref_logprobs, "k1") * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016). Returns (advantages, returns).

    The value after the last real token is 0 (the episode ends there); padding contributes nothing.
    """
    values = values * mask
    rewards = rewards * mask
    t_len = rewards.shape[1]
    last = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(t_len)):
        next_value = values[:, t + 1] if t + 1 < t_len else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        last = last * mask[:, t]
        advantages[:, t] = last
    returns = advantages + values
    return advantages, returns


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate objective, as a loss to minimise, with its clip fraction and approx-KL."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    losses = -advantages * ratio
    losses_clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(losses, losses_clipped), mask)
    stats = {
        "clipfrac": masked_mean((losses_clipped > losses).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio.square(), mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * max((v - R)^2, (clip(v, v_old +- eps) - R)^2), masked mean."""
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    losses = (values - returns).square()
    losses_clipped = (clipped - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(losses, losses_clipped), mask)
    return loss, {"clipfrac": masked_mean((losses_clipped > losses).float(), mask)}


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019): move the coefficient so the measured KL tracks `target`.

    beta <- beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
