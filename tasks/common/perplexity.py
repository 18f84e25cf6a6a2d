"""Validation perplexity pieces shared by `evaluate` (the models' perplexity and bits per byte) and
`export` (each quantized format against full precision): the same windows of the same tokens, the same
summed negative log-likelihood, so the two stages' perplexities are comparable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from tasks.common.artifacts import Manifest
from tasks.common.models import load_tokenizer, tokenizer_dir
from tasks.common.tokens import INDEX_FILE, open_split


def read_val_tokens(tok_stage: Manifest) -> tuple[np.ndarray, Any]:
    """The tokenizer stage's validation tokens, and the tokenizer that decodes them (for bits per byte)."""
    tok_stage.file(INDEX_FILE)
    shards = open_split(tok_stage.dir, "val")
    if not shards:
        raise ValueError(
            f"stage tokenizer ({tok_stage.path}) wrote no validation tokens: perplexity needs some"
        )
    tokens = np.concatenate([np.asarray(a) for a in shards])
    return tokens, load_tokenizer(tokenizer_dir(tok_stage), require_chat_template=False)


def val_windows(tokens: np.ndarray, block_size: int, max_tokens: int) -> np.ndarray:
    """Non-overlapping windows of `block_size + 1` tokens sharing their edge token, so that every
    token after the first is predicted exactly once. Shape (n, block_size + 1)."""
    tokens = np.asarray(tokens[:max_tokens], dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError(f"only {len(tokens)} validation tokens: need at least 2 to measure perplexity")
    block = min(block_size, len(tokens) - 1)
    n = (len(tokens) - 1) // block
    idx = np.arange(n)[:, None] * block + np.arange(block + 1)[None, :]
    windows: np.ndarray = tokens[idx]
    return windows


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
