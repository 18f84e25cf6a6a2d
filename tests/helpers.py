"""Small builders for tests: real upstream stage folders with real manifests, made from tiny data."""

from __future__ import annotations

from pathlib import Path

from tasks.common.artifacts import Manifest, write_manifest
from tasks.common.data import Document, ShardWriter


def documents_stage(root: Path, docs: list[Document], stage: str = "upstream", shard_docs: int = 1000) -> Manifest:
    """A finished stage folder holding `docs` as document shards, sealed with its manifest."""
    out = Path(root) / stage / "test"
    out.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out, shard_docs) as w:
        w.write_all(docs)
    return write_manifest(
        Manifest(stage=stage, stage_hash="test", stage_version=1, path=str(out), config={}, counts={"documents": w.count})
    )


def seal(folder: Path, stage: str, **fields) -> Manifest:
    """Turn a folder a test filled by hand into a finished stage (manifest written last)."""
    return write_manifest(Manifest(stage=stage, stage_hash="test", stage_version=1, path=str(folder), config={}, **fields))


def docs(*texts: str, source: str = "test") -> list[Document]:
    return [Document(id=f"d{i}", text=t, source=source) for i, t in enumerate(texts)]
