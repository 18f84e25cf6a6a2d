"""`lmforge dedup IN.jsonl OUT.jsonl`: exact + near-duplicate removal on any JSONL file.

Contract (scripts rely on it): OUT holds the kept records' input lines unchanged (all fields), in input
order; `OUT.dups.jsonl` (OUT with `.jsonl` replaced by `.dups.jsonl`) holds one line per removed record,
`{"id", "duplicate_of", "jaccard_estimate"}`. A record without an `id` field is known by its line
number in IN (1-based). Both files are written to temporary names and renamed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from conf.dedup import DedupConfig
from tasks.common.jsonl import json_lines, write_jsonl
from tasks.dedup.core import Params, Result, config_default, find_duplicates

log = logging.getLogger(__name__)
DEFAULTS = {name: config_default(name) for name in ("threshold", "num_perm", "ngram", "workers")}


def dups_path(out: Path) -> Path:
    name = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(name + ".dups.jsonl")


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
    """(line number, id, text, raw line) of every non-blank line; the first bad line raises, naming
    file:line."""
    with open(path, encoding="utf-8") as fh:  # plain JSONL only, as the contract says
        for line in json_lines(fh):
            lineno, rec = line.lineno, line.value
            if line.error is not None:
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({line.error.msg}); fix or remove the line"
                ) from line.error
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            text = rec.get(text_field)
            if not isinstance(text, str):
                what = "no" if text is None else f"a non-string ({type(text).__name__})"
                raise ValueError(
                    f"{path}:{lineno}: {what} '{text_field}' field; pick the text with --text-field"
                )
            rid = rec.get("id")
            yield lineno, lineno if rid is None else rid, text, line.text.rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    """Exit status 0: done; 1: a bad input line (nothing written); 2: bad arguments."""
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
    _write_outputs(src, out, args.text_field, result)
    print(
        f"{result.total} records: {result.count('exact')} exact + {result.count('near')} near duplicates "
        "removed, "
        f"{result.kept} kept (LSH {result.bands} bands x {result.rows} rows) -> {out}, {dups_path(out)}"
    )
    return 0


def _config(args: argparse.Namespace, src: Path, out: Path) -> DedupConfig | None:
    """The stage's config from the options (it validates them and supplies the other defaults), or None
    after printing every problem with the arguments."""
    dups = dups_path(out)
    problems = []
    if not src.is_file():
        problems.append(f"input {src} does not exist")
    if out.resolve() == src.resolve() or dups.resolve() == src.resolve():
        problems.append(f"output {out} would overwrite the input")
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
    """The kept input lines verbatim, and the removed records' ids, each to a temp name renamed at the end."""
    dups = dups_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out, tmp_dups = out.with_name(out.name + ".tmp"), dups.with_name(dups.name + ".tmp")
    with open(tmp_out, "w", encoding="utf-8") as fh:
        for i, (_, _, _, line) in enumerate(_records(src, text_field)):
            if result.keep[i]:
                fh.write(line + "\n")
    removed = (
        {
            "id": result.ids[d.index],
            "duplicate_of": result.ids[d.keeper],
            "jaccard_estimate": round(d.jaccard_estimate, 4),
        }
        for d in result.duplicates
    )
    write_jsonl(tmp_dups, removed)
    os.replace(tmp_dups, dups)
    os.replace(tmp_out, out)
