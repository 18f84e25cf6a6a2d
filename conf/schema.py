"""`PipelineConfig`: the whole lifecycle's configuration, one typed section per stage."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from conf.align import AlignDataConfig, RewardConfig, SftConfig
from conf.collect import CollectConfig
from conf.dedup import DedupConfig
from conf.evaluate import EvaluateConfig, ExportConfig
from conf.execution import ExecutionConfig
from conf.filter import FilterConfig
from conf.pii import PiiConfig
from conf.ppo import PpoConfig
from conf.pretrain import PretrainConfig
from conf.tokenizer import TokenizerConfig


class TrackingConfig(BaseModel):
    """Where MLflow records runs. Unset values fall back to an embedded store under the artifacts root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else SQLite under artifacts."
    )
    experiment: str = "lmforge"


class PipelineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("lmforge", description="Run name prefix shown in MLflow and Prefect.")
    preset: str = Field("custom", description="Preset this config was built from (informational).")
    artifacts_root: str | None = Field(
        None, description="Where stage folders live; default: $LMFORGE_ARTIFACTS, else ./artifacts."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    collect: CollectConfig = Field(default_factory=CollectConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    align_data: AlignDataConfig = Field(default_factory=AlignDataConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    ppo: PpoConfig = Field(default_factory=PpoConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    def resolved_artifacts_root(self) -> Path:
        root = self.artifacts_root or os.environ.get("LMFORGE_ARTIFACTS") or "artifacts"
        return Path(root).expanduser().resolve()
