"""The model: a transformers `LlamaForCausalLM` built from a handful of dials, never downloaded.

Built from a config (not `from_pretrained`), so the architecture lives in code and the result is a
plain Hugging Face folder that transformers, trl and peft load directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class ModelDials:
    """The sizes that define the model (a plain mirror of the config's model fields)."""

    vocab_size: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int | None
    intermediate_size: int
    seq_len: int
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    init_std: float = 0.02


def llama_config(
    dials: ModelDials, bos_id: int | None, eos_id: int | None, pad_id: int | None
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=dials.vocab_size,
        hidden_size=dials.d_model,
        intermediate_size=dials.intermediate_size,
        num_hidden_layers=dials.n_layers,
        num_attention_heads=dials.n_heads,
        num_key_value_heads=dials.n_kv_heads or dials.n_heads,
        max_position_embeddings=dials.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": dials.rope_theta},
        tie_word_embeddings=dials.tie_embeddings,
        initializer_range=dials.init_std,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attn_implementation="sdpa",
    )


def build_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model; the same seed gives the same weights on every rank."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def generation_config(config: LlamaConfig, max_new_tokens: int = 64) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=0.8,
        top_k=50,
    )


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, input-embedding parameters); tied weights counted once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embed = model.get_input_embeddings().weight.numel()
    return total, embed
