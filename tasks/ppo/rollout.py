"""Rollouts: chat-templated prompts in, sampled responses, their log-probs, values and scores out.

Prompt rendering, left padding, generation and reward-model scoring are the shared ones
(`tasks.common.generation`, `tasks.common.reward_model`): the evaluate stage measures the policy with
the same code PPO trained it with. What is here is PPO's own: log-probs and values per response token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tasks.common.generation import Messages, chat_prompt_ids, filter_logits
from tasks.ppo import core

# (prompts as chat messages, decoded completions, response token ids up to EOS) -> one score each
ScoreFn = Callable[[list[Messages], list[str], list[list[int]]], torch.Tensor]


def prompt_ids(tokenizer, prompts: Sequence[Messages]) -> list[list[int]]:
    """Token ids of each prompt rendered by the chat template with the assistant turn opened."""
    return [chat_prompt_ids(tokenizer, p) for p in prompts]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip the left padding, so a padded prompt gets the positions it has alone."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def join(queries, query_mask, responses, resp_mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) of query+response for one forward pass."""
    ids = torch.cat([queries, responses], 1)
    attn = torch.cat([query_mask, resp_mask.long()], 1)
    return ids, attn, position_ids(attn)


def response_logits(
    model, queries, query_mask, responses, resp_mask, temperature: float = 1.0
) -> torch.Tensor:
    """Logits [B, T_resp, V] that predicted each response token, divided by the sampling temperature."""
    ids, attn, pos = join(queries, query_mask, responses, resp_mask)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
    ctx = queries.shape[1]
    return logits[:, ctx - 1 : -1].float() / temperature


# A sampled token that the current policy's top-k/top-p filter has since dropped has probability 0 (log-prob
# -inf). Flooring it keeps the importance ratio exp(floor - old) ~ 0, with no gradient, instead of NaN from
# -inf arithmetic; the floor is far below the log-prob of anything a policy samples (e^-50 ~ 2e-22).
LOGPROB_FLOOR = -50.0


def behaviour_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Log-probs [B, T] of `tokens` under the distribution the policy samples from: the temperature-scaled
    `logits` filtered by top-k / top-p exactly as `generate` filters them; 0 on padding.

    PPO's ratio pi_new / pi_old must compare the behaviour policy with itself: with the unfiltered
    softmax the stored log-probs would belong to a distribution nothing was sampled from.
    """
    logprobs = core.logprobs_from_logits(filter_logits(logits, top_k, top_p), tokens)
    return torch.where(mask.bool(), logprobs.clamp(min=LOGPROB_FLOOR), torch.zeros_like(logprobs))


class TokenValueModel(torch.nn.Module):
    """Per-token values from a sequence-classification model: its score head on every hidden state.

    A module of its own so DDP wraps (and syncs the gradients of) the whole value computation.
    """

    def __init__(self, seq_cls_model):
        super().__init__()
        self.model = seq_cls_model
        self.config = seq_cls_model.config

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        backbone = getattr(self.model, self.model.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.model.score(hidden).squeeze(-1).float()


def response_values(value_model, queries, query_mask, responses, resp_mask) -> torch.Tensor:
    """Values [B, T_resp]; the value at response token t is predicted from the state before it (ctx-1+t)."""
    ids, attn, pos = join(queries, query_mask, responses, resp_mask)
    values = value_model(ids, attn, pos)
    ctx = queries.shape[1]
    return values[:, ctx - 1 : -1]


def response_tokens(responses: torch.Tensor, mask: torch.Tensor, has_eos: torch.Tensor) -> list[list[int]]:
    """Each response's token ids up to (not including) its EOS: what gets decoded and scored."""
    lengths = (mask.sum(1) - has_eos.float()).long().tolist()
    return [r[:n] for r, n in zip(responses.tolist(), lengths, strict=True)]


@dataclass
class Rollout:
    """One batch of episodes and everything PPO needs from it (all [B, T_resp] except scores/has_eos [B])."""

    queries: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    has_eos: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    completions: list[str]

    def __len__(self) -> int:
        return len(self.queries)
