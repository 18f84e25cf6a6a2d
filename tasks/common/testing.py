"""Builders for tests and benchmarks (like `transformers.testing_utils`): tiny real models and sealed
stage folders. `tests/` and `bench/` both import from here; `bench/` never imports `tests/`.

    from tasks.common.testing import seal, tiny_lm_folder
    folder = tiny_lm_folder(tmp_path / "model")        # loads with from_pretrained, offline
    tokenizer = seal(tmp_path / "tokenizer" / "x", "tokenizer")   # a finished stage folder

Heavy libraries (torch, transformers, tokenizers) are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conf.tokenizer import SPECIAL_TOKENS
from tasks.common.artifacts import Manifest, write_manifest
from tasks.common.data import Document, ShardWriter

DEFAULT_TEXTS = [
    "Return the sum of the numbers in the list.",
    "Explain the Python function quantiles in module statistics.",
    "Divide data into n continuous intervals with equal probability.",
    "Parse a fragment of a document, given the context from which it was extracted.",
    "Run the command line interface. The args parameter lets you specify the argument list.",
    "A class for producing HTML side by side comparison with change highlights.",
]


# --- sealed stage folders -----------------------------------------------------------------------------


def documents_stage(
    root: Path, docs: list[Document], stage: str = "upstream", shard_docs: int = 1000
) -> Manifest:
    """A finished stage folder holding `docs` as document shards, sealed with its manifest."""
    out = Path(root) / stage / "test"
    out.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out, shard_docs) as w:
        w.write_all(docs)
    return write_manifest(
        Manifest(
            stage=stage,
            stage_hash="test",
            stage_version=1,
            path=str(out),
            config={},
            counts={"documents": w.count},
        )
    )


def seal(folder: Path, stage: str, inputs: dict[str, Manifest] | None = None, **fields: Any) -> Manifest:
    """Turn a folder filled by hand into a finished stage (manifest written last); `inputs` records
    upstream content hashes so a lineage can be checked."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fields.setdefault("stage_hash", "test")
    fields.setdefault("config", {})
    return write_manifest(
        Manifest(
            stage=stage,
            stage_version=1,
            path=str(folder),
            inputs={k: m.content_hash for k, m in (inputs or {}).items()},
            **fields,
        )
    )


# --- tiny models --------------------------------------------------------------------------------------


def tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = 512) -> Any:
    """A byte-level BPE trained in milliseconds on `texts`, wrapped as a transformers fast tokenizer with
    the tokenizer stage's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tasks.tokenizer import CHAT_TEMPLATE  # the stage's template, so tiny models chat like real ones

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
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        extra_special_tokens=list(SPECIAL_TOKENS[3:]),
        model_max_length=512,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def tiny_llama(tokenizer: Any, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised `LlamaForCausalLM` sized for `tokenizer` (seeded: same weights every time)."""
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
