"""Config of the `collect` stage: where documents come from and how sources are mixed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from conf.base import StageConfig


class SourceBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(None, description="Label used in counts; defaults to the kind.")
    max_docs: int | None = Field(None, gt=0, description="Cap on documents taken from this source.")
    weight: float = Field(1.0, gt=0, description="Relative share when `CollectConfig.max_docs` caps the mix.")

    @property
    def label(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]


class PydocsSource(SourceBase):
    """Docstrings of the standard library (and optionally installed packages), parsed with `ast`."""

    kind: Literal["pydocs"] = "pydocs"
    packages: list[str] = Field(
        default_factory=lambda: ["stdlib"],
        description="'stdlib' and/or names of installed top-level packages to read docstrings from.",
    )
    min_chars: int = Field(200, ge=1, description="Docstrings shorter than this are skipped.")
    include_private: bool = Field(False, description="Also read `_private` modules and objects.")


Source = Annotated[PydocsSource, Field(discriminator="kind")]


class CollectConfig(StageConfig):
    sources: list[Source] = Field(default_factory=lambda: [PydocsSource()], min_length=1)
    max_docs: int | None = Field(None, gt=0, description="Total cap, split across sources by weight.")
    shard_docs: int = Field(5000, gt=0, description="Documents per output shard.")
    on_error: Literal["skip", "fail"] = "skip"
