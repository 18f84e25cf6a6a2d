"""JSON Lines, read and written one way everywhere.

Reading names the file and line of anything that is not JSON, so a corrupt record is found by its
address, not by a traceback. Writing keeps non-ASCII text as is (`ensure_ascii=False`): the corpora
are mostly natural language, and escaping doubles their size. `.zst` paths are zstd-compressed.

`json_lines` is the one parsing loop: readers that fail on a bad line (`iter_jsonl`, document shards,
`lmforge dedup`) and readers that skip and report it (`lmforge scrub`, `collect`'s sources) differ only
in what they do with a `JsonLine` whose `error` is set. Given bytes, it also decodes each line itself,
strictly: a line that is not UTF-8 is such a bad line too, and so (for files from outside) is one
holding a lone surrogate escape (`"\\ud800"`, which no UTF-8 file can store), never a crash later when
the text is encoded again.

`open_bytes` is the one way to open a possibly compressed input (`.gz`, `.zst`): `collect`'s sources and
the standalone CLIs (`read_json_lines`) read through it. `atomic_output` is the one way the CLIs write:
a fresh temp name beside the output (never an existing file, so never an input), renamed when complete.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import zstandard

COMPRESSIONS = (".gz", ".zst")


# ---------------------------------------------------------------------------------------------
# opening files


def open_text(path: Path, mode: str) -> IO[str]:
    """Open plain or `.zst` text for reading (`"r"`) or writing (`"w"`, `"a"` for plain files)."""
    path = Path(path)
    if path.suffix == ".zst":
        if "w" in mode:
            raw: Any = zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb"))
        else:
            raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


class ZstdReader(io.RawIOBase):
    """A .zst file's content, frame by frame. Unlike zstandard's `stream_reader`, a truncated file raises."""

    def __init__(self, path: Path):
        self._fh = open(path, "rb")
        self._dec: Any = None
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._buf):
            rest = b""
            if self._dec is not None and self._dec.eof:  # a frame ended; another may follow
                rest, self._dec = self._dec.unused_data, None
            chunk = rest or self._fh.read(1 << 16)
            if not chunk:
                if self._dec is not None:
                    raise EOFError("zstd stream ended before the end of its frame (truncated file?)")
                return 0
            if self._dec is None:
                self._dec = zstandard.ZstdDecompressor().decompressobj()
            self._buf, self._pos = self._dec.decompress(chunk), 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_bytes(path: Path) -> IO[bytes]:
    """The file's content as a binary stream, decompressing .gz and .zst (truncation raises EOFError)."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.suffix == ".zst":
        return io.BufferedReader(ZstdReader(path), 1 << 16)
    return open(path, "rb")


# Errors that mean "this stream cannot be read (further)": truncated or corrupt compressed data, I/O.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, zstandard.ZstdError)


# ---------------------------------------------------------------------------------------------
# parsing


def dumps(record: Any) -> str:
    """One record as one JSON line (without the newline)."""
    return json.dumps(record, ensure_ascii=False)


class NotText(json.JSONDecodeError):
    """A line that is not Unicode text: bytes that are not UTF-8, or a lone surrogate escape."""


class JsonLine(NamedTuple):
    """One non-blank line: its number (1-based, blank lines counted), its text, and its value or parse error.

    A named tuple, not a dataclass: one is made per line of every shard read, and tuples are cheapest."""

    lineno: int
    text: str
    value: Any = None
    error: json.JSONDecodeError | None = None

    @property
    def problem(self) -> str:
        """What is wrong with the line, for a `file:line: ...` message ('' when nothing is)."""
        e = self.error
        if e is None:
            return ""
        if isinstance(e, NotText):
            return f"{e.msg} at column {e.colno}"
        return f"not valid JSON ({e.msg} at column {e.colno})"


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _decode(raw: bytes) -> str | NotText:
    """A line's text, or why it is not UTF-8 (the offending byte and its column)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        shown = raw.decode("utf-8", errors="replace")
        col = len(raw[: e.start].decode("utf-8", errors="replace"))
        return NotText(f"not valid UTF-8 (byte 0x{raw[e.start]:02x})", shown, col)


def _lone_surrogate(text: str, value: Any) -> NotText | None:
    """A lone surrogate that a `\\uD8xx` escape put into `value`: valid JSON, but no text (it cannot be
    written as UTF-8). Only lines with such an escape are checked, so ordinary lines cost a substring test."""
    if not _SURROGATE_ESCAPE.search(text):
        return None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        escape = f"\\u{ord(e.object[e.start]):04x}"
        at = text.lower().find(escape)
        return NotText(f"lone surrogate {escape} (not valid Unicode text)", text, max(at, 0))
    return None


def json_lines(lines: Iterable[str | bytes], check_surrogates: bool = False) -> Iterator[JsonLine]:
    """Parse every non-blank line (bytes are decoded as UTF-8 first; a BOM before line 1 is dropped); a
    line that is not JSON comes back with `error` set, so the caller decides whether it fails the read
    or is skipped. Besides malformed JSON, `json.loads` rejects nesting too deep for the recursion limit
    and integers longer than Python's digit limit: bad lines as well. Errors raised by `lines` itself (a
    truncated file) pass through. One loop, no helper calls per line: every shard read goes through it.

    `check_surrogates`: also reject lone surrogate escapes, for files from outside (the CLIs, collect's
    sources). Shards lmforge wrote cannot hold one (writing it fails), so their reads skip the check,
    which costs ~2 us a line (~25%) on lines with escapes."""
    for lineno, line in enumerate(lines, 1):
        if isinstance(line, bytes):
            decoded = _decode(line)
            if isinstance(decoded, NotText):
                yield JsonLine(lineno, str(decoded.doc), error=decoded)
                continue
            text = decoded
        else:
            text = line
        if lineno == 1 and text[:1] == "\ufeff":
            text = text[1:]
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            yield JsonLine(lineno, text, error=e)
            continue
        except RecursionError:
            yield JsonLine(lineno, text, error=json.JSONDecodeError("nested too deeply", text, 0))
            continue
        except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
            yield JsonLine(lineno, text, error=json.JSONDecodeError(str(e), text, 0))
            continue
        if check_surrogates and "\\" in text:
            yield JsonLine(lineno, text, value, _lone_surrogate(text, value))
        else:
            yield JsonLine(lineno, text, value)


class UnreadableInput(ValueError):
    """An input that cannot be opened, or that stops being readable (truncated or corrupt compression)."""


def read_json_lines(path: str | Path) -> Iterator[JsonLine]:
    """`json_lines` of a plain, `.gz` or `.zst` file (`-`: stdin). A file that cannot be opened or read
    to its end raises `UnreadableInput` naming `path:line` (the line it could not read)."""
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        fh: IO[bytes] = sys.stdin.buffer if name == "<stdin>" else open_bytes(Path(path))
    except OSError as e:
        raise UnreadableInput(f"{name}: cannot open ({e.strerror or e})") from e
    read = 0

    def counted() -> Iterator[bytes]:
        nonlocal read
        for raw in fh:
            read += 1
            yield raw

    try:
        yield from json_lines(counted(), check_surrogates=True)
    except READ_ERRORS as e:
        raise UnreadableInput(
            f"{name}:{read + 1}: cannot read further ({type(e).__name__}: {e}): the file is truncated, "
            "corrupt or not what its name says"
        ) from e
    finally:
        if name != "<stdin>":
            fh.close()


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line; a line that is not JSON raises, naming
    path:line."""
    with open_text(path, "r") as fh:
        for line in json_lines(fh):
            if line.error is not None:
                raise ValueError(f"{path}:{line.lineno}: {line.problem}") from line.error
            yield line.lineno, line.value


def read_jsonl(path: Path) -> list[Any]:
    """Every record of a JSONL file, in order."""
    return [rec for _, rec in iter_jsonl(path)]


# ---------------------------------------------------------------------------------------------
# writing


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


def output_problem(out: Path, inputs: Iterable[Path]) -> str | None:
    """Why `out` cannot be written as an output of a command reading `inputs`, or None.

    The same file as an input (by path, through a symlink, or a hard link: same inode) would be
    destroyed; an existing folder, or a file where a parent folder has to be, cannot be written."""
    out = Path(out)
    for src in inputs:
        same = out.resolve() == Path(src).resolve()
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(out, src)
        if same:
            return f"output {out} is the input {src} (the same file); write to another path"
    if out.is_dir():
        return f"output {out} is a folder; name a file"
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {out}: {parent} is a file, not a folder"
    return None


def _new_file_mode(path: Path) -> int:
    """The permissions `path` keeps (it exists) or a new file gets under the process's umask
    (`mkstemp` creates 0600 whatever the umask)."""
    with contextlib.suppress(OSError):
        return os.stat(path).st_mode & 0o7777
    mask = os.umask(0)  # the only portable way to read it; set back at once
    os.umask(mask)
    return 0o666 & ~mask


def _compressing(raw: IO[bytes], name: str) -> IO[bytes]:
    """`raw` itself, or a gzip/zstd stream into it (by the name's suffix) that leaves it open on close."""
    if name.endswith(".gz"):
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)  # type: ignore[return-value]
    if name.endswith(".zst"):
        writer: IO[bytes] = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
        return writer
    return raw


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A UTF-8 text stream (gzip/zstd-compressed for `.gz`/`.zst` names) that appears at `path` only when
    complete: written to a fresh temp name beside it (`mkstemp`: never an existing file, so never an
    input), synced, given the permissions the umask (or the replaced file) asks for, renamed over `path`.
    On an error nothing is left behind and an existing `path` is untouched. Creates missing folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    raw = os.fdopen(fd, "wb")
    text = io.TextIOWrapper(_compressing(raw, path.name), encoding="utf-8", newline="\n")
    complete = False
    try:
        yield text
        text.flush()
        stream = text.detach()
        if stream is not raw:
            stream.close()  # writes the compressed stream's end; `raw` stays open
        raw.flush()
        os.fsync(raw.fileno())
        raw.close()
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
        complete = True
    finally:
        if not complete:
            with contextlib.suppress(Exception):  # a detached wrapper raises here; `raw` is closed below
                text.close()
            raw.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
