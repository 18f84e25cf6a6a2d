"""Tiny real models for tests: a byte-level BPE tokenizer with the tokenizer stage's special tokens and
chat template, and a randomly initialised `LlamaForCausalLM`, saved as a model folder like the
pretrain stage's `model/`.

    from tests.tiny_models import tiny_lm_folder
    folder = tiny_lm_folder(tmp_path / "model")        # loads with from_pretrained, offline
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from conf.tokenizer import SPECIAL_TOKENS
from tasks.tokenizer import CHAT_TEMPLATE

DEFAULT_TEXTS = [
    "Return the sum of the numbers in the list.",
    "Explain the Python function quantiles in module statistics.",
    "Divide data into n continuous intervals with equal probability.",
    "Parse a fragment of a document, given the context from which it was extracted.",
    "Run the command line interface. The args parameter lets you specify the argument list.",
    "A class for producing HTML side by side comparison with change highlights.",
]


def tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = 512):
    """A byte-level BPE trained in milliseconds on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((texts or DEFAULT_TEXTS) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        extra_special_tokens=list(SPECIAL_TOKENS[3:]),
        model_max_length=512,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    return fast


def tiny_llama(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def tiny_lm_folder(
    path: Path, texts: list[str] | None = None, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """A model folder (LlamaForCausalLM + tokenizer + generation config) as the pretrain stage writes it."""
    from tasks.common.models import save_model_folder

    tok = tiny_tokenizer(texts)
    model = tiny_llama(tok, hidden=hidden, layers=layers, seed=seed)
    return save_model_folder(model, tok, Path(path))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread while tiny models train: faster for them, and robust when other processes
    share the cores (spinning OpenMP workers slow tiny ops down tenfold under contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
