"""Config of the `tokenizer` stage: byte-level BPE, the train/val split and decontamination."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from conf.base import StageConfig

# The byte alphabet every byte-level BPE starts from, and the control tokens added on top of it.
BYTE_ALPHABET = 256
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


class TokenizerConfig(StageConfig):
    NOT_RESULT_AFFECTING: ClassVar[frozenset[str]] = frozenset({"batch_docs", "parallel", "workers"})

    vocab_size: int = Field(
        4096,
        description="Target vocabulary (bytes + special tokens + merges); <= 65,536 keeps uint16 shards.",
    )
    min_frequency: int = Field(2, ge=1, description="A pair must occur this often to be merged.")
    max_token_length: int | None = Field(
        None, gt=0, description="Longest token, in characters, a merge may build (None: no limit)."
    )
    train_max_chars: int | None = Field(
        None,
        gt=0,
        description="Train the BPE on the first this-many characters of the train split (None: all).",
    )
    model_max_length: int = Field(1024, gt=0, description="Saved as the tokenizer's model_max_length.")
    val_fraction: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Share of documents (chosen by id hash) held out as the validation split.",
    )
    split_seed: int = Field(0, description="Seed of the id hash that assigns documents to splits.")
    decontam_ngram: int = Field(
        13,
        ge=0,
        description="Drop documents sharing a word n-gram this long with an eval document (0: ids only).",
    )
    decontam_files: list[str] = Field(
        default_factory=list,
        description="Evaluation sets the corpus is decontaminated against, besides align_data's held-out "
        "rows: local .jsonl/.json/.parquet/.txt files or folders of them (e.g. an lm-eval task folder's "
        "data); every string of a row is eval text. Their content keys the stage hash.",
    )
    shard_tokens: int = Field(50_000_000, gt=0, description="Tokens per binary shard file.")
    batch_docs: int = Field(1000, gt=0, description="Documents per encode_batch call.")
    workers: int | None = Field(
        None,
        gt=0,
        description="Processes for the decontamination pass, one corpus shard each (None: all cores).",
    )
    parallel: bool = Field(
        True, description="Let the tokenizers library use all cores (TOKENIZERS_PARALLELISM)."
    )

    @field_validator("vocab_size")
    @classmethod
    def _room_for_merges(cls, v: int) -> int:
        floor = BYTE_ALPHABET + len(SPECIAL_TOKENS)
        if v <= floor:
            raise ValueError(
                f"tokenizer.vocab_size={v} must exceed {floor} "
                f"({BYTE_ALPHABET} byte symbols + {len(SPECIAL_TOKENS)} special tokens), "
                "leaving room for merges"
            )
        if v > 2**32:
            raise ValueError(f"tokenizer.vocab_size={v} does not fit the uint32 token shards")
        return v
