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
RejectedKind = Literal["other_object", "truncated", "shuffled", "generic"]
TrainRole = Literal["rm", "judge", "ppo"]
ObjectKind = Literal["function", "method", "class", "module"]
OBJECT_KINDS: tuple[ObjectKind, ...] = ("function", "method", "class", "module")


def _default_rejected_weights() -> dict[RejectedKind, float]:
    return {"other_object": 1.0, "truncated": 1.0, "shuffled": 1.0, "generic": 1.0}


def _default_role_shares() -> dict[TrainRole, float]:
    return {"rm": 0.5, "judge": 0.25, "ppo": 0.25}


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
    weight: float = Field(
        1.0,
        gt=0,
        description="Mix weight: the share of the training rows used (below 1: a seeded sample by prompt "
        "hash; above 1: rows repeated, e.g. 2.5 = every row twice and half of them a third time). "
        "Eval rows are never weighted.",
    )
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
    """Where the alignment data comes from: the built-in pairs (`builtin`), user datasets in trl's formats
    (`sft_datasets`, `pref_datasets`, local files or Hub ids), or a mix of them by `weight`. With none,
    the stage writes empty files and says so; pretraining does not need them, and the alignment stages
    fail before any training (their prechecks, `flows/stages.py`) naming these fields.

    Built-in pairs are split by top-level package into roles (`tasks/common/alignment.py`): `eval`
    takes `eval_fraction` of the pairs, the rest is shared by `rm`, `judge` and `ppo` by `role_shares`.

    User rows are split by a seeded hash of their prompt (`seed`), so equal prompts never straddle a split:
    `eval` takes the source's `eval_fraction`; SFT training rows go to `sft/train.jsonl`, preference
    training rows to the `rm` role. When no built-in package falls in the `judge` role (e.g. `builtin:
    false`), the judge takes the share judge / (rm + judge) of the user preference rows (hash with
    `judge_seed`), which then leave the `rm` role. When none falls in `ppo`, the PPO prompts are the user
    SFT training rows; with no SFT rows either, the share ppo / (rm + judge + ppo) of the preference rows
    (hash with `judge_seed`) becomes PPO prompts (the chosen answer as reference) and leaves both reward
    models' pairs. Every user eval row is also an evaluation document the tokenizer decontaminates
    pretraining data against.
    """

    builtin: bool = Field(True, description="Build instruction/preference pairs from the pydocs documents.")
    builtin_weight: float = Field(
        1.0, gt=0, description="Mix weight of the built-in training rows (as `DatasetSource.weight`)."
    )
    kinds: list[ObjectKind] = Field(
        default_factory=lambda: list(OBJECT_KINDS),
        min_length=1,
        description="pydocs object kinds that become prompts.",
    )
    eval_fraction: float = Field(
        0.15, gt=0, lt=1, description="Share of the pairs held out for evaluation (whole top-level packages)."
    )
    role_shares: dict[TrainRole, float] = Field(
        default_factory=_default_role_shares,
        description="How the packages not held out are shared by the policy's reward model (rm), the "
        "independent judge and the PPO prompts (normalised; by pair count).",
    )
    seed: int = Field(0, description="Seeds the package split and the reward model's rejected answers.")
    judge_seed: int = Field(
        1, description="Seeds the judge's rejected answers: a different draw than the reward model's."
    )
    min_response_chars: int = Field(20, ge=1, description="Summaries shorter than this make no pair.")
    max_response_chars: int = Field(
        320, ge=40, description="Summaries are cut at the last whole sentence within this length."
    )
    max_signature_chars: int = Field(100, ge=10, description="Longer signatures are shown as '(...)'.")
    max_pairs: int | None = Field(None, gt=0, description="Cap on built-in pairs (chosen by id hash).")
    rejected_weights: dict[RejectedKind, float] = Field(
        default_factory=_default_rejected_weights,
        description="Target shares of the rejected kinds (balanced exactly, where a kind can be made): "
        "another object's summary (length-matched), the right summary cut short (punctuation kept), its "
        "sentences (or words) shuffled (case and punctuation kept), a generic stock answer.",
    )
    rejected_per_prompt: int = Field(
        2, ge=1, le=4, description="Rejected answers (of different kinds) per rm/judge prompt."
    )
    balance_lengths: bool = Field(
        True,
        description="Make a share of the other-object and generic rejections longer than the chosen "
        "answer, mirroring the truncations, so 'the longer answer wins' is no better than chance.",
    )
    sft_datasets: list[DatasetSource] = Field(default_factory=list, description="User SFT datasets, added.")
    pref_datasets: list[DatasetSource] = Field(
        default_factory=list, description="User preference datasets, added."
    )

    @model_validator(mode="after")
    def _check(self) -> AlignDataConfig:
        if any(w < 0 for w in self.rejected_weights.values()) or sum(self.rejected_weights.values()) <= 0:
            raise ValueError("rejected_weights: weights must be >= 0 with a positive sum")
        if any(w < 0 for w in self.role_shares.values()) or self.role_shares.get("rm", 0) <= 0:
            raise ValueError("role_shares: shares must be >= 0 and the rm share positive")
        if self.min_response_chars >= self.max_response_chars:
            raise ValueError("min_response_chars must be below max_response_chars")
        return self

    @property
    def has_sources(self) -> bool:
        """Whether any source could give alignment data (the built-in one only finds out on its documents)."""
        return self.builtin or bool(self.sft_datasets) or bool(self.pref_datasets)
