"""Documents and document shards: JSONL files (optionally zstd) of `{id, text, source, meta}`.

Stages pass documents to each other as shards under `documents/` in their folders; readers take the
shard list from the upstream manifest, so a stray file in a folder is never read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.common.artifacts import Manifest
from tasks.common.jsonl import iter_jsonl, open_text

__all__ = ["DOCS_DIR", "Document", "ShardWriter", "iter_jsonl", "read_documents", "read_shard", "shard_paths"]

DOCS_DIR = "documents"


@dataclass
class Document:
    id: str
    text: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        # A plain dict, not dataclasses.asdict: asdict deep-copies `meta` for every document.
        return json.dumps(
            {"id": self.id, "text": self.text, "source": self.source, "meta": self.meta}, ensure_ascii=False
        )


class ShardWriter:
    """Writes documents into `documents/shard-00000.jsonl[.zst]`, rolling over every `shard_docs`."""

    def __init__(
        self,
        out: Path,
        shard_docs: int = 5000,
        compress: bool = False,
        subdir: str = DOCS_DIR,
        start: int = 0,
    ):
        self.folder = Path(out) / subdir
        self.start = start  # number of the first shard (a per-shard job writes shard `start` only)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_docs = shard_docs
        self.suffix = ".jsonl.zst" if compress else ".jsonl"
        self.count = 0
        self.chars = 0
        self.paths: list[Path] = []
        self._fh: io.TextIOBase | None = None
        self._in_shard = 0

    def write(self, doc: Document) -> None:
        if self._fh is None or self._in_shard >= self.shard_docs:
            self._roll()
        assert self._fh is not None
        self._fh.write(doc.to_json() + "\n")
        self._in_shard += 1
        self.count += 1
        self.chars += len(doc.text)

    def write_all(self, docs: Iterable[Document]) -> None:
        for doc in docs:
            self.write(doc)

    def _roll(self) -> None:
        self.close()
        path = self.folder / f"shard-{self.start + len(self.paths):05d}{self.suffix}"
        self.paths.append(path)
        self._fh = open_text(path, "w")
        self._in_shard = 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_shard(path: Path) -> Iterator[Document]:
    with open_text(path, "r") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                yield Document(
                    id=str(rec["id"]),
                    text=rec["text"],
                    source=rec.get("source", ""),
                    meta=rec.get("meta") or {},
                )
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a document record ({e})") from e


def shard_paths(manifest: Manifest, subdir: str = DOCS_DIR) -> list[Path]:
    paths = [p for p in manifest.files_under(f"{subdir}/") if p.name.endswith((".jsonl", ".jsonl.zst"))]
    if not paths:
        raise FileNotFoundError(f"stage {manifest.stage} ({manifest.path}) produced no {subdir}/ shards")
    return paths


def read_documents(manifest: Manifest, subdir: str = DOCS_DIR) -> Iterator[Document]:
    """Every document of an upstream stage, in shard order."""
    for path in shard_paths(manifest, subdir):
        yield from read_shard(path)
