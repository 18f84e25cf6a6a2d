"""JSON Lines, read and written one way everywhere.

Reading names the file and line of anything that is not JSON, so a corrupt record is found by its
address, not by a traceback. Writing keeps non-ASCII text as is (`ensure_ascii=False`): the corpora
are mostly natural language, and escaping doubles their size. `.zst` paths are zstd-compressed.

`json_lines` is the one parsing loop: readers that fail on a bad line (`iter_jsonl`, document shards,
`lmforge dedup`) and readers that skip and report it (`lmforge scrub`, `collect`'s sources) differ only
in what they do with a `JsonLine` whose `error` is set.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple


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


class JsonLine(NamedTuple):
    """One non-blank line: its number (1-based, blank lines counted), its text, and its value or parse error.

    A named tuple, not a dataclass: one is made per line of every shard read, and tuples are cheapest."""

    lineno: int
    text: str
    value: Any = None
    error: json.JSONDecodeError | None = None


def json_lines(lines: Iterable[str]) -> Iterator[JsonLine]:
    """Parse every non-blank line; a line that is not JSON comes back with `error` set, so the caller
    decides whether it fails the read or is skipped. Errors raised by `lines` itself (a truncated file)
    pass through."""
    for lineno, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            yield JsonLine(lineno, text, error=e)
            continue
        yield JsonLine(lineno, text, value)


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line; a line that is not JSON raises, naming
    path:line."""
    with open_text(path, "r") as fh:
        for line in json_lines(fh):
            if line.error is not None:
                e = line.error
                raise ValueError(f"{path}:{line.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
            yield line.lineno, line.value


def read_jsonl(path: Path) -> list[Any]:
    """Every record of a JSONL file, in order."""
    return [rec for _, rec in iter_jsonl(path)]


def write_jsonl(path: Path, records: Iterable[Any]) -> int:
    """Write `records` as JSON lines (replacing the file, creating its folder); returns how many were
    written."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with JsonlWriter(path) as out:
        for rec in records:
            out.write(rec)
    return out.count


class JsonlWriter:
    """Appends records as JSON lines and counts them: to a file it creates (or truncates), or to a stream
    the caller opened (stdout, a temp file), which it then leaves open."""

    def __init__(self, target: Path | str | IO[str], mode: str = "w") -> None:
        self.count = 0
        if isinstance(target, str | Path):
            self.path: Path | None = Path(target)
            self._fh = open_text(self.path, mode)
            self._owned = True
        else:
            self.path, self._fh, self._owned = None, target, False

    def write(self, record: Any) -> None:
        self._fh.write(dumps(record) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._owned:
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
