"""Config of the `dedup` stage: exact then near-duplicate removal."""

from __future__ import annotations

from pydantic import Field

from conf.base import StageConfig


class DedupConfig(StageConfig):
    normalize: bool = Field(True, description="Lowercase and collapse whitespace before exact hashing.")
    max_removed_share: float = Field(
        0.5, ge=0, le=1, description="Quality gate: fail if more than this share of documents is removed."
    )
