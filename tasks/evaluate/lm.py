"""Model-side measurements: perplexity and bits per byte, decoding strategies, sequence log-probs and
ROUGE-L. Plain torch + transformers, no trainer: evaluation is a few loops. Prompt rendering, batched
generation and reward-model scoring are the shared ones (`tasks.common.generation`,
`tasks.common.reward_model`), so the numbers here are those of the code PPO trained with.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from tasks.common.generation import generation_config
from tasks.common.perplexity import nll_sum

# --- perplexity and bits per byte (windows and NLL: tasks/common/perplexity.py) ---------------------


def predicted_bytes(tokenizer: PreTrainedTokenizerBase, windows: np.ndarray) -> int:
    """UTF-8 bytes of the text the predicted tokens spell (special tokens such as EOS spell nothing)."""
    stream = [int(windows[0, 0])] + windows[:, 1:].reshape(-1).tolist()
    whole = tokenizer.decode(stream, skip_special_tokens=True)
    first = tokenizer.decode(stream[:1], skip_special_tokens=True)
    return len(whole.encode("utf-8")) - len(first.encode("utf-8"))


def perplexity_and_bpb(
    model: PreTrainedModel, windows: np.ndarray, n_bytes: int, batch_size: int
) -> tuple[float, float]:
    """(perplexity, bits per byte); bits per byte compares models whose tokenizers differ."""
    nats, count = nll_sum(model, windows, batch_size)
    return math.exp(nats / count), nats / math.log(2) / max(n_bytes, 1)


# --- prompts, decodings, log-probs ------------------------------------------------------------------


def text_prompt_ids(tok: PreTrainedTokenizerBase, text: str, max_tokens: int) -> list[int]:
    """A raw-text prompt for the pretrained model, which never saw the chat format. Token shards join
    documents with EOS, so EOS is what precedes the start of a document in pretraining."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [tok.eos_token_id] + ids[max(0, len(ids) - max_tokens + 1) :]


DECODINGS = ("greedy", "temperature", "top_k", "top_p", "beam")


def decoding_config(
    name: str,
    tok: PreTrainedTokenizerBase,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 20,
    top_p: float = 0.9,
    num_beams: int = 4,
    repetition_penalty: float = 1.0,
) -> GenerationConfig:
    """An explicit GenerationConfig per strategy, so the model folder's defaults never leak in.

    Each sampling strategy changes one knob from plain ancestral sampling (temperature 1, no top-k, no
    top-p), so the table shows what that knob alone does; "sample" is plain sampling, what a KL estimate
    needs.
    """
    sample = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    strategies = {
        "greedy": {},
        "temperature": {**sample, "temperature": temperature},
        "top_k": {**sample, "top_k": top_k},
        "top_p": {**sample, "top_p": top_p},
        "beam": {"num_beams": num_beams, "early_stopping": True},
        "sample": sample,
    }
    if name not in strategies:
        raise ValueError(f"unknown decoding {name!r}; choose from {', '.join(DECODINGS)} or 'sample'")
    settings = {
        "num_beams": 1,
        "repetition_penalty": repetition_penalty,
        "bos_token_id": tok.bos_token_id,
        **strategies[name],
    }
    return generation_config(tok.eos_token_id, tok.pad_token_id, max_new_tokens, **settings)


def response_text(tok: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """The answer as a reader sees it: no special tokens, no surrounding whitespace."""
    return tok.decode(ids, skip_special_tokens=True).strip()


@torch.no_grad()
def sequence_logprobs(
    model: PreTrainedModel, prompts: list[list[int]], responses: list[list[int]], pad_id: int, batch_size: int
) -> list[float]:
    """log p(response | prompt) summed over the response tokens, per sequence (right-padded batches)."""
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        pairs = list(zip(prompts[i : i + batch_size], responses[i : i + batch_size], strict=True))
        width = max(len(p) + len(r) for p, r in pairs)
        ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for j, (p, r) in enumerate(pairs):
            ids[j, : len(p) + len(r)] = torch.tensor(p + r)
            mask[j, : len(p) + len(r)] = 1
            target[j, len(p) : len(p) + len(r)] = True
        ids, mask, target = ids.to(model.device), mask.to(model.device), target.to(model.device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
        tok_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * target[:, 1:]
        out.extend(tok_logp.sum(-1).tolist())
    return out


# --- ROUGE ------------------------------------------------------------------------------------------


class Rouge:
    """ROUGE-L F-measure (rouge-score's default tokenizer: lowercased alphanumeric words)."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def __call__(self, reference: str, prediction: str) -> float:
        return self.scorer.score(reference, prediction)["rougeL"].fmeasure


def rouge_l(reference: str, prediction: str) -> float:
    """One ROUGE-L F-measure (builds a scorer each call: use `Rouge` in loops)."""
    return Rouge()(reference, prediction)
