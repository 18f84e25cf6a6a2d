"""Config of the `align_data` stage: instruction and preference pairs for the alignment stages.

Defaults suit the `tiny` preset (CPU, the whole lifecycle in minutes); bigger presets override them.
The content of local dataset files keys the stage hash too: the runner fingerprints them
(`flows/stages.py`), this module only names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conf.base import StageConfig

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
RejectedKind = Literal["other_object", "truncated", "shuffled"]
ObjectKind = Literal["function", "method", "class", "module"]
OBJECT_KINDS: tuple[ObjectKind, ...] = ("function", "method", "class", "module")


def _default_rejected_weights() -> dict[RejectedKind, float]:
    return {"other_object": 0.5, "truncated": 0.25, "shuffled": 0.25}


class DatasetSource(BaseModel):
    """A user dataset in one of trl's standard formats: a local JSONL/JSON/Parquet file or a Hub dataset.

    SFT rows: `messages` (the last message is the assistant's answer) or `prompt`/`completion`.
    Preference rows: `prompt`/`chosen`/`rejected` (or conversational `chosen`/`rejected` with an implicit
    prompt). Strings and message lists are both accepted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="Local .jsonl/.json/.parquet file, or a Hugging Face dataset id.")
    name: str | None = Field(None, description="Hub dataset config name.")
    split: str = Field("train", description="Hub dataset split to read.")
    revision: str | None = Field(None, description="Hub dataset revision (pin it: the cache keys on it).")
    label: str | None = Field(
        None, description="Name used in ids and counts; default: the file stem / dataset id."
    )
    max_rows: int | None = Field(None, gt=0, description="Read at most this many rows.")
    eval_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Share of rows held out (by prompt hash); default: align_data.eval_fraction.",
    )

    @property
    def is_local(self) -> bool:
        return self.path.endswith(LOCAL_SUFFIXES) or Path(self.path).expanduser().exists()

    @property
    def tag(self) -> str:
        raw = self.label or (Path(self.path).stem if self.is_local else self.path)
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)


class AlignDataConfig(StageConfig):
    builtin: bool = Field(True, description="Build instruction/preference pairs from the pydocs documents.")
    kinds: list[ObjectKind] = Field(
        default_factory=lambda: list(OBJECT_KINDS),
        min_length=1,
        description="pydocs object kinds that become prompts.",
    )
    eval_fraction: float = Field(0.15, gt=0, lt=1, description="Share of modules held out for evaluation.")
    seed: int = Field(0, description="Seeds the module split and the choice of rejected answers.")
    min_response_chars: int = Field(20, ge=1, description="Summaries shorter than this make no pair.")
    max_response_chars: int = Field(
        320, ge=40, description="Summaries are cut at the last whole sentence within this length."
    )
    max_signature_chars: int = Field(100, ge=10, description="Longer signatures are shown as '(...)'.")
    max_pairs: int | None = Field(None, gt=0, description="Cap on built-in pairs (chosen by id hash).")
    rejected_weights: dict[RejectedKind, float] = Field(
        default_factory=_default_rejected_weights,
        description="How rejected answers are made: another object's summary from the same module, "
        "the right summary cut short, or its sentences (or words) shuffled.",
    )
    sft_datasets: list[DatasetSource] = Field(default_factory=list, description="User SFT datasets, added.")
    pref_datasets: list[DatasetSource] = Field(
        default_factory=list, description="User preference datasets, added."
    )

    @model_validator(mode="after")
    def _check(self) -> AlignDataConfig:
        if any(w < 0 for w in self.rejected_weights.values()) or sum(self.rejected_weights.values()) <= 0:
            raise ValueError("rejected_weights: weights must be >= 0 with a positive sum")
        if self.min_response_chars >= self.max_response_chars:
            raise ValueError("min_response_chars must be below max_response_chars")
        if not self.builtin and not self.sft_datasets and not self.pref_datasets:
            raise ValueError(
                "builtin is false and no sft_datasets/pref_datasets are given: there would be no data"
            )
        return self
