"""JSON Lines, read and written one way everywhere.

Reading names the file and line of anything that is not JSON, so a corrupt record is found by its
address, not by a traceback. Writing keeps non-ASCII text as is (`ensure_ascii=False`): the corpora
are mostly natural language, and escaping doubles their size. `.zst` paths are zstd-compressed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def open_text(path: Path, mode: str) -> IO[str]:
    """Open plain or `.zst` text for reading (`"r"`) or writing (`"w"`, `"a"` for plain files)."""
    path = Path(path)
    if path.suffix == ".zst":
        import zstandard

        if "w" in mode:
            raw: Any = zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb"))
        else:
            raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def dumps(record: Any) -> str:
    """One record as one JSON line (without the newline)."""
    return json.dumps(record, ensure_ascii=False)


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line; a line that is not JSON raises naming path:line."""
    with open_text(path, "r") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from e


def read_jsonl(path: Path) -> list[Any]:
    """Every record of a JSONL file, in order."""
    return [rec for _, rec in iter_jsonl(path)]


def write_jsonl(path: Path, records: Iterable[Any]) -> int:
    """Write `records` as JSON lines (replacing the file); returns how many were written."""
    with JsonlWriter(path) as out:
        for rec in records:
            out.write(rec)
    return out.count


class JsonlWriter:
    """Appends records as JSON lines to a file it creates (or truncates); counts them."""

    def __init__(self, path: Path, mode: str = "w") -> None:
        self.path = Path(path)
        self.count = 0
        self._fh = open_text(self.path, mode)

    def write(self, record: Any) -> None:
        self._fh.write(dumps(record) + "\n")
        self.count += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
