"""Config of the `collect` stage: where documents come from and how sources are mixed.

Each entry of `sources` is one kind of source (a discriminated union on `kind`):
`pydocs` (built-in docstring corpus), `files` (local text/JSON/Parquet/CSV, plain or .gz/.zst),
`hf` (a Hugging Face dataset, streamed) and `warc` (Common Crawl style WARC files, HTML -> text).

The stage's cache key covers this config, not the contents of the files it names: when files change
in place, point at new paths (or rename the source) so the stage re-runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conf.base import StageConfig


class SourceBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(None, description="Label used in counts and ids; defaults to the kind.")
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


class FilesSource(SourceBase):
    """Local files by glob: .txt/.md (one document per file), .jsonl/.json, .parquet, .csv; optionally
    .gz/.zst."""

    kind: Literal["files"] = "files"
    paths: list[str] = Field(min_length=1, description="Glob patterns (`**` recurses), relative to the cwd.")
    text_field: str = Field(
        "text", min_length=1, description="JSON key / Parquet or CSV column holding the text."
    )
    id_field: str | None = Field(
        "id", description="Key/column with a document id, if present; else file:line."
    )
    min_chars: int = Field(1, ge=1, description="Shorter texts are skipped (counted as too_short).")


class HfSource(SourceBase):
    """A Hugging Face dataset read with `datasets.load_dataset(..., streaming=True)`.

    With `max_docs` set, the first `max_docs` records of the stream are taken (a hub dataset is
    never read whole just to sample it).
    """

    kind: Literal["hf"] = "hf"
    path: str = Field(min_length=1, description="Dataset id, local folder, or a builder such as 'json'.")
    subset: str | None = Field(None, description="The dataset's configuration (load_dataset's `name`).")
    split: str = "train"
    data_files: list[str] | None = Field(None, description="Files for builders such as 'json' or 'parquet'.")
    revision: str | None = None
    text_field: str = Field("text", min_length=1)
    id_field: str | None = Field(None, description="Column with a document id; else split:index.")
    min_chars: int = Field(1, ge=1)


class WarcSource(SourceBase):
    """WARC files (Common Crawl style, .warc or .warc.gz): HTML responses turned into text by trafilatura."""

    kind: Literal["warc"] = "warc"
    paths: list[str] = Field(min_length=1, description="Glob patterns of WARC files.")
    min_chars: int = Field(200, ge=1, description="Pages whose extracted text is shorter are skipped.")
    include_tables: bool = Field(False, description="Keep the text of HTML tables.")
    favor_precision: bool = Field(True, description="trafilatura: prefer leaving out boilerplate to recall.")


Source = Annotated[PydocsSource | FilesSource | HfSource | WarcSource, Field(discriminator="kind")]


def _default_sources() -> list[Source]:
    return [PydocsSource()]


class CollectConfig(StageConfig):
    sources: list[Source] = Field(default_factory=_default_sources, min_length=1)
    max_docs: int | None = Field(None, gt=0, description="Total cap, split across sources by weight.")
    shard_docs: int = Field(5000, gt=0, description="Documents per output shard.")
    on_error: Literal["skip", "fail"] = Field(
        "skip",
        description="Unreadable files and broken records: skip (count + rejects.jsonl) or fail the stage.",
    )

    @model_validator(mode="after")
    def _unique_labels(self) -> CollectConfig:
        labels = [s.label for s in self.sources]
        dups = sorted({label for label in labels if labels.count(label) > 1})
        if dups:
            raise ValueError(
                f"collect.sources: several sources are labelled {', '.join(dups)}; "
                "give each a distinct `name`"
            )
        return self
