"""Readers for `collect`'s external sources: local files, Hugging Face datasets and WARC archives.

A reader is `fn(source_cfg, stats) -> Iterator[Document]`. Bad input never stops a reader silently:
undecodable bytes are replaced and counted (`stats.decode`), and an unreadable file or a broken record
goes through `stats.problem(...)`, which fails the stage (`on_error: fail`) or counts the skip by
reason and lists it, with file and line, in `rejects.jsonl` (`on_error: skip`). Records read before
a file turns out to be corrupt (a truncated .gz) are kept.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from conf.collect import FilesSource, HfSource, WarcSource
from tasks.common.data import Document
from tasks.common.jsonl import JsonlWriter, json_lines, open_bytes
from tasks.common.pii import mask_id, mask_text, mask_value

log = logging.getLogger(__name__)

COMPRESSIONS = (".gz", ".zst")
FORMATS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".csv": "csv"}  # fmt: skip


class CollectError(RuntimeError):
    """A source could not be read and `on_error: fail` is set, or nothing was collected."""


@dataclass
class SourceStats:
    """Per-source bookkeeping that ends up in the manifest, and the on_error policy readers apply."""

    label: str = ""
    on_error: str = "skip"
    rejects_sink: JsonlWriter | None = None
    docs: int = 0
    chars: int = 0
    decode_replacements: int = 0
    rejects: Counter = field(default_factory=Counter)
    problems: int = 0

    def problem(
        self, reason: str, file: str | Path, error: object, line: int | None = None, **where: Any
    ) -> None:
        """An unreadable file or broken record: raise under `fail`, else count and list it, then go on.

        File names, ids and messages may hold PII (a record's text can be quoted in an error): they are
        masked before they reach the log, the exception or `rejects.jsonl`."""
        file, error, where = mask_id(str(file)), mask_text(str(error)), mask_value(where)
        loc = f"{file}:{line}" if line is not None else str(file)
        extra = "".join(f" ({k} {v})" for k, v in where.items())
        if self.on_error == "fail":
            raise CollectError(
                f"collect source {self.label!r}: {loc}{extra}: {reason}: {error}. "
                "Fix or remove the input, or set collect.on_error=skip to skip and report it."
            )
        log.warning("collect %s: skipping %s%s: %s: %s", self.label, loc, extra, reason, error)
        self.rejects[reason] += 1
        self.problems += 1
        if self.rejects_sink is not None:
            rec = {
                "source": self.label,
                "file": file,
                "line": line,
                **where,
                "reason": reason,
                "error": str(error),
            }
            self.rejects_sink.write(rec)

    def decode(self, raw: bytes, encoding: str = "utf-8") -> str:
        """Text from bytes; bytes invalid in `encoding` become U+FFFD and are counted."""
        try:
            return raw.decode(encoding)
        except LookupError:  # an unknown charset name (from a web page's header): fall back to UTF-8
            return self.decode(raw, "utf-8")
        except UnicodeDecodeError:
            text = raw.decode(encoding, errors="replace")
            genuine = raw.count("\ufffd".encode()) if encoding.lower().replace("-", "") == "utf8" else 0
            self.decode_replacements += text.count("\ufffd") - genuine
            return text


# ---------------------------------------------------------------------------------------------
# opening files


def file_format(path: Path) -> str | None:
    """'text' | 'jsonl' | 'json' | 'parquet' | 'csv' from the name, looking through .gz/.zst."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def expand(patterns: list[str], stats: SourceStats) -> list[Path]:
    """Files matching the globs, sorted per pattern, each once; a pattern matching nothing is a problem."""
    paths: dict[Path, None] = {}
    for pattern in patterns:
        found = [
            Path(p)
            for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            if os.path.isfile(p)
        ]
        if not found:
            stats.problem("no_files", pattern, "the glob matched no files")
        paths.update(dict.fromkeys(found))
    return list(paths)


# Errors that mean "this file cannot be read (further)"; a broken record is handled where it is read.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zstandard.ZstdError, csv.Error)


# ---------------------------------------------------------------------------------------------
# files: txt / md / jsonl / json / parquet / csv


def record_document(
    src: FilesSource | HfSource,
    rec: Any,
    file: str | Path,
    default_id: str,
    meta: dict,
    stats: SourceStats,
    where: dict,
) -> Document | None:
    """A document from one JSON/Parquet/CSV/HF record, or None (problem reported, or too short).

    `where` locates the record for error reports (`line`, `row` or `record`)."""
    if not isinstance(rec, dict):
        stats.problem("bad_record", file, f"expected an object, got {type(rec).__name__}", **where)
        return None
    text = rec.get(src.text_field)
    if not isinstance(text, str):
        got = "missing" if src.text_field not in rec else f"a {type(text).__name__}"
        keys = ", ".join(map(str, list(rec)[:10]))
        stats.problem("bad_record", file, f"text field {src.text_field!r} is {got} (keys: {keys})", **where)
        return None
    if len(text) < src.min_chars:
        stats.rejects["too_short"] += 1
        return None
    rid = rec.get(src.id_field) if src.id_field else None
    doc_id = f"{src.label}:{rid}" if rid not in (None, "") else f"{src.label}:{default_id}"
    return Document(id=doc_id, text=text, source=src.label, meta=meta)


def read_text_file(src: FilesSource, path: Path, stats: SourceStats) -> Iterator[Document]:
    with open_bytes(path) as fh:
        text = stats.decode(fh.read())
    if len(text) < src.min_chars:
        stats.rejects["too_short"] += 1
        return
    yield Document(id=f"{src.label}:{path}", text=text, source=src.label, meta={"path": str(path)})


def read_jsonl_lines(
    src: FilesSource, path: Path, lines: Iterator[str], stats: SourceStats
) -> Iterator[Document]:
    """One record per line; a broken line is a problem, a file that stops being readable ends the file."""
    read = 0  # lines read so far, blank ones included: a read error is on the line after them

    def counted() -> Iterator[str]:
        nonlocal read
        for line in lines:
            read += 1
            yield line

    try:
        for line in json_lines(counted(), check_surrogates=True):
            if line.error is not None:
                stats.problem("bad_json", path, line.error, line=line.lineno)
                continue
            meta = {"path": str(path), "line": line.lineno}
            where = {"line": line.lineno}
            doc = record_document(src, line.value, path, f"{path}:{line.lineno}", meta, stats, where)
            if doc:
                yield doc
    except READ_ERRORS as e:
        stats.problem("unreadable_file", path, e, line=read + 1)


def read_jsonl(src: FilesSource, path: Path, stats: SourceStats) -> Iterator[Document]:
    with open_bytes(path) as fh:
        yield from read_jsonl_lines(src, path, (stats.decode(raw) for raw in fh), stats)


def read_json(src: FilesSource, path: Path, stats: SourceStats) -> Iterator[Document]:
    """A JSON array of records, one JSON object, or (as many `.json` files are) JSON lines."""
    with open_bytes(path) as fh:
        raw = fh.read()
    text = stats.decode(raw)
    first = text.lstrip()[:1]
    if first not in ("[", "{"):
        stats.problem("bad_json", path, "expected a JSON array, object or JSON lines", line=1)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if first == "{":  # JSON lines (split on \n only: JSON strings may hold U+2028 and friends)
            yield from read_jsonl_lines(src, path, iter(text.split("\n")), stats)
        else:
            stats.problem("bad_json", path, e.msg, line=e.lineno)
        return
    for i, rec in enumerate(data if isinstance(data, list) else [data]):
        doc = record_document(
            src, rec, path, f"{path}#{i}", {"path": str(path), "record": i}, stats, {"record": i}
        )
        if doc:
            yield doc


def read_csv(src: FilesSource, path: Path, stats: SourceStats) -> Iterator[Document]:
    with open_bytes(path) as fh:
        text = stats.decode(fh.read())
    csv.field_size_limit(1 << 30)  # documents are long; the default limit is 128 KiB per field
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if src.text_field not in (reader.fieldnames or []):
        stats.problem(
            "bad_schema", path, f"no column {src.text_field!r} (columns: {reader.fieldnames})", line=1
        )
        return
    lineno = 1
    try:
        for rec in reader:
            lineno = reader.line_num
            meta = {"path": str(path), "line": lineno}
            doc = record_document(src, rec, path, f"{path}:{lineno}", meta, stats, {"line": lineno})
            if doc:
                yield doc
    except csv.Error as e:
        stats.problem("unreadable_file", path, e, line=reader.line_num)


def read_parquet(src: FilesSource, path: Path, stats: SourceStats) -> Iterator[Document]:
    import pyarrow
    import pyarrow.parquet as pq

    source: Any = path
    if path.suffix.lower() in COMPRESSIONS:  # Parquet needs random access
        with open_bytes(path) as fh:
            source = io.BytesIO(fh.read())
    pf = pq.ParquetFile(source)
    names = pf.schema_arrow.names
    if src.text_field not in names:
        stats.problem("bad_schema", path, f"no column {src.text_field!r} (columns: {names})")
        return
    columns = [c for c in (src.text_field, src.id_field) if c and c in names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            for rec in batch.to_pylist():
                row += 1
                meta = {"path": str(path), "row": row}
                doc = record_document(src, rec, path, f"{path}#{row}", meta, stats, {"row": row})
                if doc:
                    yield doc
    except (OSError, pyarrow.ArrowException) as e:  # a corrupt row group: rows read so far are kept
        stats.problem("unreadable_file", path, e, row=row + 1)


FILE_READERS = {"text": read_text_file, "jsonl": read_jsonl, "json": read_json, "csv": read_csv,
                "parquet": read_parquet}  # fmt: skip


def files_documents(src: FilesSource, stats: SourceStats) -> Iterator[Document]:
    import pyarrow

    for path in expand(src.paths, stats):
        fmt = file_format(path)
        if fmt is None:
            stats.problem(
                "unsupported_format", path, f"unknown extension; expected {', '.join(FORMATS)} (+ .gz/.zst)"
            )
            continue
        try:
            yield from FILE_READERS[fmt](src, path, stats)
        except (*READ_ERRORS, pyarrow.ArrowException) as e:  # failed before (or outside) any record
            stats.problem("unreadable_file", path, e)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


def hf_documents(src: HfSource, stats: SourceStats) -> Iterator[Document]:
    """Streams the split; with `max_docs`, stops after that many documents."""
    import datasets

    where = f"{src.path}[{src.subset or ''}:{src.split}]"
    try:
        ds = datasets.load_dataset(
            src.path,
            src.subset,
            split=src.split,
            data_files=src.data_files,
            revision=src.revision,
            streaming=True,
        )
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (not found, bad config, offline)
        stats.problem("unreadable_source", where, f"{type(e).__name__}: {e}")
        return
    taken, i = 0, -1
    try:
        for i, rec in enumerate(ds):
            meta = {"dataset": src.path, "subset": src.subset, "split": src.split, "index": i}
            doc = record_document(src, rec, where, f"{src.split}:{i}", meta, stats, {"record": i})
            if doc:
                yield doc
                taken += 1
                if src.max_docs and taken >= src.max_docs:
                    return
    except CollectError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken file inside the dataset ends the stream
        stats.problem("unreadable_source", where, f"{type(e).__name__}: {e}", record=i + 1)


# ---------------------------------------------------------------------------------------------
# WARC: HTML responses -> main text with trafilatura

_CHARSET = re.compile(rb"""charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.I)


def html_charset(content_type: str, body: bytes) -> str:
    """The charset from the HTTP header, else from a <meta> tag near the top, else UTF-8."""
    for blob in (content_type.encode("latin-1", "replace"), body[:4096]):
        m = _CHARSET.search(blob)
        if m:
            return m.group(1).decode("ascii")
    return "utf-8"


def warc_pages(path: Path, stats: SourceStats, pos: list[int]) -> Iterator[tuple[int, Any, str, bytes]]:
    """(offset, WARC headers, content type, body) of each HTML response; `pos[0]` is kept at where the
    next record starts, so a read error can say where the file broke."""
    from warcio.archiveiterator import ArchiveIterator

    with open(path, "rb") as fh:
        records = ArchiveIterator(fh)
        for rec in records:
            response = rec.rec_type == "response" and rec.http_headers is not None
            ctype = (rec.http_headers.get_header("Content-Type") or "") if response else ""
            html = "html" in ctype.lower()
            body = rec.content_stream().read() if html else b""
            offset = records.get_record_offset()  # (reads the rest of the record)
            # warcio returns a truncated record's remains silently; what is left unread says so
            missing = getattr(rec.raw_stream, "limit", 0)
            if missing:
                raise EOFError(
                    f"WARC record at offset {offset} is truncated: {missing} of {rec.length} bytes missing"
                )
            pos[0] = offset + records.get_record_length()
            if html:
                yield offset, rec.rec_headers, ctype, body
            elif response:
                stats.rejects["not_html"] += 1
    size = path.stat().st_size
    # warcio stops quietly at a cut in a record's headers (4 bytes: a plain WARC's last CRLFCRLF)
    if size - pos[0] > 4:
        raise EOFError(f"{size - pos[0]} bytes after the last complete record could not be read (truncated?)")


def warc_documents(src: WarcSource, stats: SourceStats) -> Iterator[Document]:
    from warcio.exceptions import ArchiveLoadFailed

    for path in expand(src.paths, stats):
        pos = [0]
        try:
            for offset, headers, ctype, body in warc_pages(path, stats, pos):
                doc = page_document(src, stats, path, offset, headers, ctype, body)
                if doc:
                    yield doc
        except CollectError:
            raise
        # warcio's parse errors vary
        except (ArchiveLoadFailed, *READ_ERRORS, AttributeError, TypeError) as e:
            stats.problem("unreadable_file", path, f"{type(e).__name__}: {e}", offset=pos[0])


def page_document(
    src: WarcSource, stats: SourceStats, path: Path, offset: int, headers: Any, ctype: str, body: bytes
) -> Document | None:
    """The main text of one HTML response as a document, or None (no text, or too short: counted)."""
    import trafilatura

    url = headers.get_header("WARC-Target-URI")
    text = trafilatura.extract(
        stats.decode(body, html_charset(ctype, body)),
        url=url,
        include_comments=False,
        include_tables=src.include_tables,
        favor_precision=src.favor_precision,
    )
    if not text:
        stats.rejects["no_text"] += 1
        return None
    if len(text) < src.min_chars:
        stats.rejects["too_short"] += 1
        return None
    record_id = (headers.get_header("WARC-Record-ID") or f"{path}@{offset}").strip("<>")
    meta = {"url": url, "date": headers.get_header("WARC-Date"), "path": str(path), "offset": offset}
    return Document(id=f"{src.label}:{record_id}", text=text, source=src.label, meta=meta)
