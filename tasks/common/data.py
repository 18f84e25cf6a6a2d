"""Documents and document shards: JSONL files (optionally zstd) of `{id, text, source, meta}`.

Stages pass documents to each other as shards under `documents/` in their folders; readers take the
shard list from the upstream manifest, so a stray file in a folder is never read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.common.artifacts import Manifest
from tasks.common.jsonl import JsonlWriter, json_lines, open_text

DOCS_DIR = "documents"


@dataclass
class Document:
    id: str
    text: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        # A plain dict, not dataclasses.asdict: asdict deep-copies `meta` for every document.
        return {"id": self.id, "text": self.text, "source": self.source, "meta": self.meta}


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
        self._shard: JsonlWriter | None = None

    def write(self, doc: Document) -> None:
        if self._shard is None or self._shard.count >= self.shard_docs:
            self._roll()
        assert self._shard is not None
        self._shard.write(doc.to_record())
        self.count += 1
        self.chars += len(doc.text)

    def write_all(self, docs: Iterable[Document]) -> None:
        for doc in docs:
            self.write(doc)

    def _roll(self) -> None:
        self.close()
        path = self.folder / f"shard-{self.start + len(self.paths):05d}{self.suffix}"
        self.paths.append(path)
        self._shard = JsonlWriter(path)

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_shard(path: Path) -> Iterator[Document]:
    """The documents of one shard, in order; a line that is not a document raises, naming path:line."""
    with open_text(path, "r") as fh:
        for line in json_lines(fh):
            if line.error is not None:
                raise ValueError(
                    f"{path}:{line.lineno}: not a document record ({line.error})"
                ) from line.error
            try:
                rec = line.value
                doc = Document(
                    id=str(rec["id"]),
                    text=rec["text"],
                    source=rec.get("source", ""),
                    meta=rec.get("meta") or {},
                )
            except (KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line.lineno}: not a document record ({e})") from e
            yield doc


def shard_paths(manifest: Manifest, subdir: str = DOCS_DIR) -> list[Path]:
    paths = [p for p in manifest.files_under(f"{subdir}/") if p.name.endswith((".jsonl", ".jsonl.zst"))]
    if not paths:
        raise FileNotFoundError(f"stage {manifest.stage} ({manifest.path}) produced no {subdir}/ shards")
    return paths


def read_documents(manifest: Manifest, subdir: str = DOCS_DIR) -> Iterator[Document]:
    """Every document of an upstream stage, in shard order."""
    for path in shard_paths(manifest, subdir):
        yield from read_shard(path)
