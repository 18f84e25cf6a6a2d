"""Batched generation from chat prompts, written once for every stage that samples from a policy.

PPO's rollouts and held-out comparison, the evaluate stage's answers and decoding table, and the SFT
stage's sample answers all do the same four things: render the prompt with the chat template (assistant
turn opened), left-pad a batch (a decoder continues from the last column, so every prompt must end
there), call `generate` with an explicit `GenerationConfig`, and drop whatever follows the first EOS.
Doing them in one place keeps the policies that PPO trains and the evaluate stage measures answering
exactly the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Messages = list[dict[str, str]]


def chat_prompt_ids(tokenizer: Any, messages: Messages, max_tokens: int | None = None) -> list[int]:
    """Token ids of `messages` rendered by the chat template up to the opened assistant turn.

    `max_tokens` keeps the last tokens (left truncation): the end of the prompt, where the answer
    starts, is what generation needs.
    """
    ids = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    ids = list(ids)
    return ids[-max_tokens:] if max_tokens else ids


def left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [B, longest], padded on the left as generation wants."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def first_true_index(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row ([B, T] -> [B]); T where a row has none."""
    t = bools.shape[-1]
    idx = torch.arange(t, device=bools.device).expand_as(bools)
    return torch.where(bools, idx, torch.full_like(idx, t)).min(-1).values


def response_mask(responses: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, T] float, has_eos [B] bool): tokens up to and including the first EOS are real."""
    first_eos = first_true_index(responses == eos_id)
    has_eos = first_eos < responses.shape[1]
    idx = torch.arange(responses.shape[1], device=responses.device)
    return (idx.unsqueeze(0) <= first_eos.unsqueeze(1)).float(), has_eos


def generation_config(
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    **extra: Any,
) -> Any:
    """An explicit `GenerationConfig`: greedy, or sampling with the given temperature/top-k/top-p.

    Sampling knobs are set only when sampling, so a greedy config carries no unused ones (transformers
    warns about those). `top_k=0` turns transformers' default of 50 off. `extra` (e.g. `num_beams`,
    `repetition_penalty`) goes to the config as is. Anything left unset comes from the model folder's
    generation config, exactly as keyword arguments to `generate` would.
    """
    from transformers import GenerationConfig

    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
    return GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **sampling,
        **extra,
    )


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """`logits` (already divided by the temperature) as `generate` samples from them: top-k, then top-p,
    everything filtered out set to -inf.

    Uses transformers' own warpers, in `generate`'s order, so a policy-gradient method that stores the
    log-probs of sampled tokens gets those of the distribution the tokens really came from (the
    behaviour policy), not of the unfiltered one. `top_k=0` and `top_p=1.0` are off, as in `generate`.
    """
    if not top_k and top_p >= 1.0:
        return logits
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    flat = logits.reshape(-1, logits.shape[-1])  # the warpers work on [N, V]; input_ids go unused
    if top_k:
        flat = TopKLogitsWarper(top_k=top_k)(None, flat)
    if top_p < 1.0:
        flat = TopPLogitsWarper(top_p=top_p)(None, flat)
    return flat.reshape(logits.shape)


@torch.no_grad()
def generate(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: Any) -> torch.Tensor:
    """New tokens [B, <= max_new_tokens] for a left-padded batch, everything after the first EOS set to pad.

    Rows that stop early are padded by `generate` anyway; setting the rest to pad as well means a
    response never shows tokens the model produced after it said it was done.
    """
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen)
    responses = out[:, input_ids.shape[1] :]
    mask, _ = response_mask(responses, gen.eos_token_id)
    return torch.where(mask.bool(), responses, torch.full_like(responses, gen.pad_token_id))


def generate_batched(
    model: Any, prompts: Sequence[Sequence[int]], gen: Any, batch_size: int
) -> list[list[int]]:
    """New tokens per prompt (left-padded batches of `batch_size`): up to and including the first EOS,
    without padding."""
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start : start + batch_size], gen.pad_token_id, model.device)
        for row in generate(model, ids, mask, gen).tolist():
            out.append([t for t in row if t != gen.pad_token_id])
    return out
