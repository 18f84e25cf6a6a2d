"""`lmforge scrub IN.jsonl OUT.jsonl`: the PII scrubber as a standalone JSONL tool.

Contract (scripts rely on it): every input record is written, in input order, with its text field
replaced (PII -> `<TYPE>`) and a `pii` list of `{"type", "start", "end"}` offsets into the ORIGINAL
text (Python string indices, i.e. code points; an existing `pii` field is replaced); all other
fields are kept. A line that is not a
JSON object with a string text field (or not UTF-8, or holding a lone surrogate escape) is reported on
stderr as `IN:LINE: ...` and skipped (it cannot be scrubbed safely), and the exit status is then 1.
`-` reads stdin / writes stdout; IN may be gzip- or zstd-compressed (`.gz`, `.zst`), and an OUT named
so is written compressed. The input is never changed: an OUT that is IN (by path, symlink or hard link)
is refused; the output is written to a fresh temporary name beside it and renamed when complete, so it
is never left half-written, and an input that cannot be read to its end (a truncated `.gz`) leaves no
output at all (exit 1).
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from conf.scrub import ENTITY_TYPES, ScrubConfig
from tasks.common.jsonl import (
    JsonLine,
    JsonlWriter,
    NotText,
    UnreadableInput,
    atomic_output,
    output_problem,
    read_json_lines,
)
from tasks.scrub.detect import redact
from tasks.scrub.parallel import batched, find_batches


def _records(
    lines: Iterator[JsonLine], name: str, text_field: str, bad: list[int], err: IO[str]
) -> Iterator[dict[str, Any]]:
    """The records that can be scrubbed; any other line is reported as `name:line: ...`, counted and
    skipped."""
    for line in lines:
        rec = line.value
        if line.error is not None:
            e = line.error
            problem = line.problem if isinstance(e, NotText) else f"bad JSON ({e.msg} at column {e.colno})"
        elif not isinstance(rec, dict):
            problem = f"not a JSON object (got {type(rec).__name__})"
        elif not isinstance(rec.get(text_field), str):
            problem = f"no string field {text_field!r} (use --text-field to pick another)"
        else:
            yield rec
            continue
        bad.append(line.lineno)
        print(f"{name}:{line.lineno}: {problem}; line skipped", file=err)


def scrub_jsonl(
    src: str, dst: str, cfg: ScrubConfig, text_field: str = "text", err: IO[str] | None = None
) -> dict[str, Any]:
    """Scrub `src` into `dst` (paths or `-`); returns a summary: records, with_pii, by_type, bad_lines.

    Raises `UnreadableInput` (nothing written to a file `dst`) when `src` cannot be read to its end."""
    err = err or sys.stderr  # looked up per call: sys.stderr may have been replaced since import
    bad: list[int] = []
    name = "<stdin>" if src == "-" else src
    with _output(dst) as fout:
        recs = _records(read_json_lines(src), name, text_field, bad, err)
        summary = _scrub_records(recs, JsonlWriter(fout), cfg, text_field)
    return {**summary, "bad_lines": bad}


@contextlib.contextmanager
def _output(dst: str) -> Iterator[IO[str]]:
    """stdout for `-`; else `atomic_output`: a temp file beside `dst`, renamed to it when complete."""
    if dst == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_output(Path(dst)) as fout:
        yield fout


def _scrub_records(
    recs: Iterator[dict[str, Any]], out: JsonlWriter, cfg: ScrubConfig, text_field: str
) -> dict[str, Any]:
    """Write every record with its text scrubbed and its `pii` offsets; count what was found."""
    by_type: Counter[str] = Counter()
    with_pii = 0
    batches = ((batch, [r[text_field] for r in batch]) for batch in batched(recs, cfg.batch_docs))
    for batch, found in find_batches(batches, cfg):
        for rec, spans in zip(batch, found, strict=True):
            rec[text_field] = redact(rec[text_field], spans)
            rec["pii"] = [sp.to_json() for sp in spans]
            out.write(rec)
            with_pii += bool(spans)
            by_type.update(sp.type for sp in spans)
    return {"records": out.count, "with_pii": with_pii, "by_type": dict(by_type)}


def add_arguments(p: Any) -> None:
    """The `scrub` subcommand's arguments (argparse parser from flows/cli.py)."""
    p.description = __doc__
    p.formatter_class = __import__("argparse").RawDescriptionHelpFormatter
    p.add_argument("input", help="JSONL file to read ('-': stdin)")
    p.add_argument("output", help="JSONL file to write ('-': stdout)")
    p.add_argument("--text-field", default="text", help="field holding the text to scrub (default: text)")
    p.add_argument(
        "--entities", help=f"comma-separated entity types (default: all: {','.join(ENTITY_TYPES)})"
    )
    p.add_argument(
        "--phone-regions",
        "--phone-region",
        dest="phone_regions",
        help="comma-separated regions for numbers without +country code "
        "(default: the major locales, see scrub.phone_regions; ZZ: only +numbers)",
    )
    p.add_argument(
        "--phone-leniency",
        choices=["possible", "valid", "strict_grouping", "exact_grouping"],
        help="how sure the phone matcher must be (default: valid)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1; output is the same)")


def run(args: Any) -> int:
    """Entry point of the `scrub` subcommand (argparse namespace from flows/cli.py)."""
    from pydantic import ValidationError

    fields: dict[str, Any] = {"workers": args.workers}
    if args.entities:
        fields["entities"] = [e.strip().upper() for e in args.entities.split(",") if e.strip()]
    if args.phone_regions:
        fields["phone_regions"] = args.phone_regions
    if args.phone_leniency:
        fields["phone_leniency"] = args.phone_leniency
    try:
        cfg = ScrubConfig(**fields)
    except ValidationError as e:
        for problem in e.errors():
            option = "--" + str(problem["loc"][0]).replace("_", "-") if problem["loc"] else "options"
            print(f"error: {option}: {problem['msg']}", file=sys.stderr)
        return 2
    problem = _arguments_problem(args.input, args.output)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        summary = scrub_jsonl(args.input, args.output, cfg, args.text_field)
    except UnreadableInput as e:
        print(f"error: {e}; nothing written", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot write {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(summary["by_type"].items())) or "none"
    note = f"; {len(summary['bad_lines'])} bad line(s) skipped" if summary["bad_lines"] else ""
    print(
        f"scrubbed {summary['records']} records ({summary['with_pii']} with PII: {kinds}) "
        f"-> {args.output}{note}",
        file=sys.stderr,
    )
    return 1 if summary["bad_lines"] else 0


def _arguments_problem(src: str, dst: str) -> str | None:
    """A missing input, or an output that cannot be written or would destroy the input; None if fine."""
    if src != "-" and not Path(src).is_file():
        return f"input file {src} not found" if not Path(src).exists() else f"input {src} is not a file"
    if dst == "-":
        return None
    return output_problem(Path(dst), [] if src == "-" else [Path(src)])
