"""Small builders for tests: real upstream stage folders with real manifests, made from tiny data."""

from __future__ import annotations

from pathlib import Path

from tasks.common.artifacts import Manifest, write_manifest
from tasks.common.data import Document, ShardWriter


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


def seal(folder: Path, stage: str, inputs: dict[str, Manifest] | None = None, **fields) -> Manifest:
    """Turn a folder a test filled by hand into a finished stage (manifest written last); `inputs` records
    upstream content hashes so a lineage can be walked."""
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


def docs(*texts: str, source: str = "test") -> list[Document]:
    return [Document(id=f"d{i}", text=t, source=source) for i, t in enumerate(texts)]
