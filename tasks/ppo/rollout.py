"""Rollouts: chat-templated prompts in, sampled responses, their log-probs, values and scores out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tasks.ppo import core

Messages = list[dict[str, str]]
# (prompts as chat messages, decoded completions, response token ids up to EOS) -> one score each
ScoreFn = Callable[[list[Messages], list[str], list[list[int]]], torch.Tensor]


def prompt_ids(tokenizer, prompts: Sequence[Messages]) -> list[list[int]]:
    """Token ids of each prompt rendered by the chat template with the assistant turn opened."""
    texts = [
        tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [B, max_len], padded on the left as generation wants."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def generate(
    model,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Sampled (or greedy) responses [B, <=max_new_tokens], with everything after the first EOS set to pad."""
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
    out = model.generate(
        input_ids=queries,
        attention_mask=query_mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **sampling,
    )
    responses = out[:, queries.shape[1] :]
    mask, _ = core.response_mask(responses, eos_id)
    return torch.where(mask.bool(), responses, torch.full_like(responses, pad_id))


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


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a sequence-classification reward model, exactly as the reward
    stage scores its held-out pairs (`tasks.reward.score_conversations`): the chat template over prompt +
    assistant message (so the text ends with EOS), the reward read at the last token, long texts keeping
    their end."""

    def __init__(self, model, tokenizer, max_length: int | None = None, batch_size: int = 32):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the reward model's tokenizer has no chat_template; the reward stage must save one"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[Messages], completions: list[str], response_ids=None) -> torch.Tensor:
        from tasks.reward import score_conversations

        conversations = [
            list(p) + [{"role": "assistant", "content": c}] for p, c in zip(prompts, completions, strict=True)
        ]
        scores, _ = score_conversations(
            self.model, self.tokenizer, conversations, self.batch_size, self.max_length
        )
        return torch.tensor(scores, dtype=torch.float32)


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
