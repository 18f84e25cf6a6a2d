"""Model-side measurements: perplexity and bits per byte, batched generation, sequence log-probs,
reward-model scores and ROUGE-L. Plain torch + transformers, no trainer: evaluation is a few loops.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tasks.common.artifacts import Manifest
from tasks.common.models import device, load_causal_lm, load_tokenizer, model_dir  # noqa: F401

Messages = list[dict[str, str]]


def tokenizer_dir(manifest: Manifest) -> Path:
    """The `tokenizer/` folder of the tokenizer stage (what decodes the validation tokens)."""
    if not manifest.files_under("tokenizer/"):
        raise FileNotFoundError(f"stage {manifest.stage} ({manifest.path}) has no tokenizer/ folder")
    return manifest.dir / "tokenizer"


def load_lm(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_causal_lm(path).to(device()).eval(), load_tokenizer(path)


def load_reward_model(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), dtype=torch.float32, local_files_only=True
    )
    model = model.to(device()).eval()
    if model.config.pad_token_id is None:  # the classifier finds each sequence's last token by the pad id
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


# --- perplexity and bits per byte -------------------------------------------------------------------


def val_windows(tokens: np.ndarray, block_size: int, max_tokens: int) -> np.ndarray:
    """Non-overlapping windows of `block_size + 1` tokens sharing their edge token, so that every
    token after the first is predicted exactly once. Shape (n, block_size + 1)."""
    tokens = np.asarray(tokens[:max_tokens], dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError(f"only {len(tokens)} validation tokens: need at least 2 to measure perplexity")
    block = min(block_size, len(tokens) - 1)
    n = (len(tokens) - 1) // block
    idx = np.arange(n)[:, None] * block + np.arange(block + 1)[None, :]
    return tokens[idx]


def predicted_bytes(tokenizer: PreTrainedTokenizerBase, windows: np.ndarray) -> int:
    """UTF-8 bytes of the text the predicted tokens spell (special tokens such as EOS spell nothing)."""
    stream = [int(windows[0, 0])] + windows[:, 1:].reshape(-1).tolist()
    whole = tokenizer.decode(stream, skip_special_tokens=True)
    first = tokenizer.decode(stream[:1], skip_special_tokens=True)
    return len(whole.encode("utf-8")) - len(first.encode("utf-8"))


@torch.no_grad()
def nll_sum(model: PreTrainedModel, windows: np.ndarray, batch_size: int) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) over every window, and the tokens it covers."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = torch.as_tensor(windows[i : i + batch_size], device=model.device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    return total, count


def perplexity_and_bpb(
    model: PreTrainedModel, windows: np.ndarray, n_bytes: int, batch_size: int
) -> tuple[float, float]:
    nats, count = nll_sum(model, windows, batch_size)
    return math.exp(nats / count), nats / math.log(2) / max(n_bytes, 1)


# --- generation -------------------------------------------------------------------------------------


def chat_prompt_ids(tok: PreTrainedTokenizerBase, prompt: Messages, max_tokens: int) -> list[int]:
    """The prompt rendered by the chat template up to `<|assistant|>\\n`, left-truncated."""
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    return list(ids)[-max_tokens:]


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
    """An explicit GenerationConfig per strategy, so the model folder's defaults never leak in."""
    common = dict(
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
        num_beams=1,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    sampling = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)  # top_k=0: transformers' 50 is off
    if name == "greedy":
        pass
    elif name == "temperature":
        common.update(sampling, temperature=temperature)
    elif name == "top_k":
        common.update(sampling, top_k=top_k)
    elif name == "top_p":
        common.update(sampling, top_p=top_p)
    elif name == "beam":
        common.update(num_beams=num_beams, early_stopping=True)
    elif name == "sample":  # plain ancestral sampling: what a KL estimate needs
        common.update(sampling)
    else:
        raise ValueError(f"unknown decoding {name!r}; choose from {', '.join(DECODINGS)} or 'sample'")
    return GenerationConfig(**common)


def left_pad(seqs: list[list[int]], pad_id: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(dev), mask.to(dev)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    gen: GenerationConfig,
    batch_size: int,
) -> list[list[int]]:
    """New tokens per prompt (left-padded batches), cut after the first EOS (kept) and without pads."""
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[i : i + batch_size], tok.pad_token_id, model.device)
        seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        for row in seqs[:, ids.size(1) :].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id) + 1]
            out.append([t for t in row if t != tok.pad_token_id])
    return out


def response_text(tok: PreTrainedTokenizerBase, ids: list[int]) -> str:
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


# --- reward model and ROUGE -------------------------------------------------------------------------


@torch.no_grad()
def reward_scores(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    conversations: list[Messages],
    max_tokens: int,
    batch_size: int,
) -> list[float]:
    """Scalar reward per conversation, tokenized as trl's RewardTrainer does (the chat template)."""
    seqs = [
        list(tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"])[-max_tokens:]
        for c in conversations
    ]
    out: list[float] = []
    pad = model.config.pad_token_id
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i : i + batch_size]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(batch):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        out.extend(logits[:, 0].float().tolist())
    return out


class Rouge:
    """ROUGE-L F-measure (rouge-score's default tokenizer: lowercased alphanumeric words)."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def __call__(self, reference: str, prediction: str) -> float:
        return self.scorer.score(reference, prediction)["rougeL"].fmeasure


def rouge_l(reference: str, prediction: str) -> float:
    return Rouge()(reference, prediction)
