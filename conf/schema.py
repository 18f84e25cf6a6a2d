"""`PipelineConfig`: the whole lifecycle's configuration, one typed section per stage."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conf.align_data import AlignDataConfig
from conf.collect import CollectConfig
from conf.dedup import DedupConfig
from conf.evaluate import EvaluateConfig
from conf.execution import ExecutionConfig
from conf.export import ExportConfig
from conf.filter import FilterConfig
from conf.judge import JudgeConfig
from conf.ppo import PpoConfig
from conf.pretrain import PretrainConfig
from conf.reward import RewardConfig
from conf.scrub import ScrubConfig
from conf.sft import SftConfig
from conf.tokenizer import TokenizerConfig


class TrackingConfig(BaseModel):
    """Where MLflow records runs. Unset, the runner (`flows/environment.py`) falls back to
    $MLFLOW_TRACKING_URI, then to an embedded store under the artifacts root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else SQLite under artifacts."
    )
    experiment: str = "lmforge"


# Config sections renamed to their stage's name: old key -> new key. The old key still works, with a warning.
RENAMED_SECTIONS = {"pii": "scrub"}


def _rename_section(data: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """`data` with section `old` under its new name `new`; an error if both are set."""
    if new in data:
        raise ValueError(
            f"both '{old}' and '{new}' are set: '{old}' is the old name of '{new}'; keep '{new}'"
        )
    warnings.warn(
        f"config section '{old}' is now '{new}' (e.g. --set {new}.workers=2); '{old}' will stop working",
        FutureWarning,
        stacklevel=3,
    )
    return {(new if k == old else k): v for k, v in data.items()}


class PipelineConfig(BaseModel):
    """One section per stage, named like the stage (see `flows/stages.py`), plus tracking and execution."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _renamed_sections(cls, data: Any) -> Any:
        """Accept the old name of a renamed section, with a warning naming the new one."""
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED_SECTIONS.items():
            if old in data:
                data = _rename_section(data, old, new)
        return data

    name: str = Field("lmforge", description="Run name prefix shown in MLflow and Prefect.")
    preset: str = Field("custom", description="Preset this config was built from (informational).")
    artifacts_root: str | None = Field(
        None,
        description="Where stage folders live; default (resolved by the runner): $LMFORGE_ARTIFACTS, "
        "else ./artifacts.",
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    collect: CollectConfig = Field(default_factory=CollectConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    scrub: ScrubConfig = Field(default_factory=ScrubConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    align_data: AlignDataConfig = Field(default_factory=AlignDataConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    ppo: PpoConfig = Field(default_factory=PpoConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
