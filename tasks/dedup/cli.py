"""`lmforge dedup IN.jsonl OUT.jsonl`: exact + near-duplicate removal on any JSONL file.

Contract (scripts rely on it): OUT holds the kept records' input lines unchanged (all fields), in input
order; `OUT.dups.jsonl` (OUT with `.jsonl` replaced by `.dups.jsonl`) holds one line per removed record,
`{"id", "duplicate_of", "jaccard_estimate"}`. A record without an `id` field is known by its line
number in IN (1-based). IN may be gzip- or zstd-compressed (`.gz`, `.zst`); an OUT named so is written
compressed too (`x.jsonl.gz` -> `x.dups.jsonl.gz`).

The input is never changed: an OUT (or its dups file) that is IN, by path, symlink or hard link, is
refused before anything is read; both files are written to fresh temporary names beside them (never an
existing file) and renamed at the end, so a failure leaves neither half-written. A line that is not UTF-8
JSON with a string text field stops the command (exit 1) naming `IN:LINE`, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from conf.dedup import DedupConfig
from tasks.common.jsonl import COMPRESSIONS, JsonlWriter, atomic_output, output_problem, read_json_lines
from tasks.dedup.core import Params, Result, config_default, find_duplicates

log = logging.getLogger(__name__)
DEFAULTS = {name: config_default(name) for name in ("threshold", "num_perm", "ngram", "workers")}


def dups_path(out: Path) -> Path:
    """OUT with `.jsonl` replaced by `.dups.jsonl`, keeping a compression suffix (`.gz`, `.zst`)."""
    name, compressed = out.name, ""
    if name.endswith(COMPRESSIONS):
        name, compressed = name.rsplit(".", 1)
        compressed = "." + compressed
    name = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return out.with_name(name + ".dups.jsonl" + compressed)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Remove exact and near duplicates (MinHash LSH, datasketch) from a JSONL file. Kept records are "
        "written unchanged, in input order, to OUT.jsonl; removed ones are listed in OUT.dups.jsonl as "
        '{"id", "duplicate_of", "jaccard_estimate"} (a record without an id is known by its line number). '
        "Each cluster of duplicates keeps its longest text (then the lowest id)."
    )
    p.add_argument("input", type=Path, metavar="IN.jsonl", help="JSONL records with a text field")
    p.add_argument(
        "output", type=Path, metavar="OUT.jsonl", help="kept records; removed ones go to OUT.dups.jsonl"
    )
    # the stage's defaults (DedupConfig), so the command and a default `dedup` stage agree
    d = DEFAULTS
    p.add_argument(
        "--threshold",
        type=float,
        default=d["threshold"],
        help=f"Jaccard similarity of near duplicates (default {d['threshold']})",
    )
    p.add_argument(
        "--num-perm", type=int, default=d["num_perm"], help=f"MinHash permutations (default {d['num_perm']})"
    )
    p.add_argument("--ngram", type=int, default=d["ngram"], help=f"words per shingle (default {d['ngram']})")
    p.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    p.add_argument(
        "--workers",
        type=int,
        default=d["workers"],
        help=f"processes computing signatures (default {d['workers']})",
    )


def _records(path: Path, text_field: str) -> Iterator[tuple[int, Any, str, str]]:
    """(line number, id, text, raw line) of every non-blank line; the first bad line (or a file that
    cannot be read to its end) raises ValueError, naming file:line."""
    for line in read_json_lines(path):
        lineno, rec = line.lineno, line.value
        if line.error is not None:
            raise ValueError(f"{path}:{lineno}: {line.problem}; fix or remove the line") from line.error
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        text = rec.get(text_field)
        if not isinstance(text, str):
            what = "no" if text is None else f"a non-string ({type(text).__name__})"
            raise ValueError(f"{path}:{lineno}: {what} '{text_field}' field; pick the text with --text-field")
        rid = rec.get("id")
        yield lineno, lineno if rid is None else rid, text, line.text.rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    """Exit status 0: done; 1: a bad input line or an unwritable output (nothing written); 2: bad
    arguments."""
    src, out = Path(args.input), Path(args.output)
    cfg = _config(args, src, out)
    if cfg is None:
        return 2
    try:
        result = find_duplicates(
            ((rid, text) for _, rid, text, _ in _records(src, args.text_field)), Params.from_config(cfg)
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    repeated = len(result.ids) - len({json.dumps(i) for i in result.ids})
    if repeated:
        log.warning(
            "%s: %d records repeat an id used before; duplicate_of cannot tell them apart", src, repeated
        )
    try:
        _write_outputs(src, out, args.text_field, result)
    except ValueError as e:  # the input changed or became unreadable between the two passes
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot write {e.filename or out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(
        f"{result.total} records: {result.count('exact')} exact + {result.count('near')} near duplicates "
        "removed, "
        f"{result.kept} kept (LSH {result.bands} bands x {result.rows} rows) -> {out}, {dups_path(out)}"
    )
    return 0


def _config(args: argparse.Namespace, src: Path, out: Path) -> DedupConfig | None:
    """The stage's config from the options (it validates them and supplies the other defaults), or None
    after printing every problem with the arguments (a missing input, an output that is the input)."""
    problems = []
    if not src.is_file():
        problems.append(f"input {src} does not exist" if not src.exists() else f"input {src} is not a file")
    problem = output_problem(out, [src]) or output_problem(dups_path(out), [src])
    if problem:
        problems.append(problem)
    cfg = None
    try:
        cfg = DedupConfig(
            threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram, workers=args.workers
        )
    except ValidationError as e:
        for err in e.errors():
            flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "options"
            problems.append(f"{flag}: {err['msg']}")
    if problems or cfg is None:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return None
    return cfg


def _write_outputs(src: Path, out: Path, text_field: str, result: Result) -> None:
    """The kept input lines verbatim, and the removed records' ids, each through `atomic_output` (the
    dups file is renamed into place first, then OUT)."""
    with atomic_output(out) as kept, atomic_output(dups_path(out)) as dups:
        for i, (_, _, _, line) in enumerate(_records(src, text_field)):
            if result.keep[i]:
                kept.write(line + "\n")
        removed = JsonlWriter(dups)
        for d in result.duplicates:
            removed.write(
                {
                    "id": result.ids[d.index],
                    "duplicate_of": result.ids[d.keeper],
                    "jaccard_estimate": round(d.jaccard_estimate, 4),
                }
            )
