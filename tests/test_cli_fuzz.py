"""Fuzzing `lmforge dedup` and `lmforge scrub` with bad inputs and bad output paths (issue 15).

Every generated case must end in one of two ways: success (exit 0, outputs complete), or a non-zero
exit with a message naming the file (argument problems, exit 2) and the line (bad content, exit 1).
Never a traceback, and never a changed input: its sha256 is compared before and after, and no
temporary file is left behind. The expected bad lines come from an oracle written here from the
contract (UTF-8 JSON object with a string `text`), not from the code under test.

The cases are generated from a fixed seed, so a failure reproduces; `FUZZ_SEED=n` tries another.
The CLIs run in-process through `flows.cli.main` (fast); two cases go through the real `lmforge`
entry point as a subprocess.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from flows.cli import main
from tasks.dedup.cli import dups_path

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("FUZZ_SEED", "15"))
CASES = 48  # per command
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


# ---- generated inputs ---------------------------------------------------------------------------------


def _text(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words) + 1), f"user{rng.randrange(99)}@example.com")
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words) + 1), "héllo → ünïcode 😀")
    return " ".join(words)


def _good_line(rng: random.Random, i: int) -> bytes:
    rec: dict = {"text": _text(rng, rng.randint(0, 30))}
    if rng.random() < 0.7:
        rec["id"] = rng.choice([i, f"doc-{i}", i * 1.5])
    if rng.random() < 0.3:
        rec["meta"] = {"k": [1, None, True], "pii": "kept as is"}
    return json.dumps(rec, ensure_ascii=rng.random() < 0.5).encode()


def _bad_line(rng: random.Random, i: int) -> bytes:
    """One line of a kind the CLIs must reject (or, for a few, must read correctly)."""
    good = _good_line(rng, i)
    kind = rng.choice(
        [
            "random_bytes",
            "truncated",
            "not_utf8",
            "lone_surrogate",
            "wrong_text_type",
            "not_object",
            "no_text",
            "deep",
            "huge_int",
            "nul",
            "paired_surrogate",  # a valid escaped emoji: must be read, not rejected
        ]
    )
    if kind == "random_bytes":
        return rng.randbytes(rng.randint(1, 200)).replace(b"\n", b"")
    if kind == "truncated":
        return good[: rng.randint(1, max(1, len(good) - 1))]
    if kind == "not_utf8":
        at = rng.randrange(len(good))
        return good[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + good[at:]
    if kind == "lone_surrogate":
        return (
            json.dumps({"id": i, "text": "bad " + rng.choice(["\\ud800", "\\udfff", "\\uDBFF"])})
            .encode()
            .replace(b"\\\\u", b"\\u")
        )
    if kind == "wrong_text_type":
        return json.dumps({"id": i, "text": rng.choice([1, 2.5, None, True, [], {"a": "b"}])}).encode()
    if kind == "not_object":
        return json.dumps(rng.choice([[1, 2], "text", 3, None, True])).encode()
    if kind == "no_text":
        return json.dumps({"id": i, "body": "x"}).encode()
    if kind == "deep":
        depth = rng.choice([50, 100_000])
        return b'{"text": "x", "d": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "huge_int":
        return b'{"text": "x", "n": ' + b"9" * 5000 + b"}"
    if kind == "nul":
        return good[:-1] + b"\x00" + good[-1:]
    return json.dumps({"id": i, "text": "smile \\ud83d\\ude00 ok"}).encode().replace(b"\\\\u", b"\\u")


def _content(rng: random.Random) -> bytes:
    lines = []
    for i in range(rng.randint(0, 12)):
        r = rng.random()
        if r < 0.55:
            lines.append(_good_line(rng, i))
        elif r < 0.65:
            lines.append(rng.choice([b"", b"   ", b"\t"]))
        else:
            lines.append(_bad_line(rng, i))
    if rng.random() < 0.1:  # one huge line
        lines.insert(0, json.dumps({"id": "huge", "text": _text(rng, 50_000)}).encode())
    sep = b"\r\n" if rng.random() < 0.15 else b"\n"
    data = sep.join(lines) + (sep if rng.random() < 0.8 else b"")
    if rng.random() < 0.05:
        data = b"\xef\xbb\xbf" + data  # a UTF-8 BOM: read as if absent
    return data


def oracle(data: bytes) -> tuple[list[int], list[str]]:
    """The numbers (1-based) of the lines that are not a JSON object with a string `text` in UTF-8 text,
    and the text of the good ones (line endings and a BOM before line 1 dropped)."""
    bad, good = [], []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(lineno)
            continue
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
            json.dumps(rec, ensure_ascii=False).encode("utf-8")  # lone surrogates cannot be encoded
        except (ValueError, RecursionError, UnicodeEncodeError):
            bad.append(lineno)
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            bad.append(lineno)
            continue
        good.append(text.rstrip("\r"))
    return bad, good


# ---- generated paths ----------------------------------------------------------------------------------


@dataclass
class Case:
    src: Path
    out: Path
    data: bytes  # the decompressed content (what the lines are)
    layout: str  # how the paths were chosen
    refused: bool  # the paths alone must make the command refuse (exit 2)
    unreadable: bool = False  # a compressed input that cannot be read to its end


LAYOUTS = ["plain", "plain", "plain", "tmp_name", "dups_name", "same", "hardlink", "symlink", "parent_file",
           "out_dir", "existing_out", "gz", "zst", "truncated_gz", "truncated_zst", "fake_gz"]  # fmt: skip


def make_case(rng: random.Random, folder: Path, command: str, layout: str) -> Case:
    folder.mkdir(parents=True)
    data = _content(rng)
    src, out = folder / "in.jsonl", folder / "out" / "out.jsonl"
    refused, unreadable = False, False
    raw = data
    if layout == "tmp_name":  # the input has the name an old version used for OUT's temp file
        out = folder / "X.jsonl"
        src = folder / rng.choice(["X.jsonl.tmp", "X.dups.jsonl.tmp", ".X.jsonl.tmp"])
    elif layout == "dups_name":  # dedup's second output is the input
        out, src = folder / "X.jsonl", folder / "X.dups.jsonl"
        refused = command == "dedup"
    elif layout == "same":
        out, refused = src, True
    elif layout == "parent_file":
        (folder / "afile").write_text("not a folder")
        out, refused = folder / "afile" / rng.choice(["", "sub/"]) / "out.jsonl", True
    elif layout == "out_dir":
        out.mkdir(parents=True)
        refused = True
    elif layout in ("gz", "truncated_gz"):
        src = folder / "in.jsonl.gz"
        raw = gzip.compress(data, mtime=0)
        if layout == "truncated_gz":
            raw, unreadable = raw[: rng.randint(1, len(raw) - 1)], True
    elif layout in ("zst", "truncated_zst"):
        src = folder / "in.jsonl.zst"
        raw = zstandard.ZstdCompressor().compress(data)
        if layout == "truncated_zst":
            raw, unreadable = raw[: rng.randint(1, max(1, len(raw) - 1))], True
    elif layout == "fake_gz":  # plain text under a .gz name
        src, unreadable = folder / "in.jsonl.gz", bool(data)
    src.write_bytes(raw)
    if layout in ("hardlink", "symlink"):
        out.parent.mkdir(parents=True)
        (os.link if layout == "hardlink" else os.symlink)(src, out)
        refused = True
    if layout == "existing_out":
        out.parent.mkdir(parents=True)
        out.write_text("previous output\n")
        out.chmod(0o640)
    return Case(src, out, data, layout, refused, unreadable)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` (not following symlinks) and its hash."""
    return {
        str(p.relative_to(folder)): _sha(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


# ---- the fuzz tests -----------------------------------------------------------------------------------


def _check_common(
    command: str, case: Case, rc: int, err: str, before: dict[str, str], folder: Path, outputs: list[Path]
) -> None:
    where = f"{case.layout} {case.src.name} -> {case.out}: exit {rc}: {err[-600:]!r}"
    assert "Traceback" not in err, where
    assert _sha(case.src) == before[str(case.src.relative_to(folder))], "the input changed: " + where
    assert not [p for p in folder.rglob("*.tmp") if p != case.src], "a temp file was left: " + where
    if case.refused:
        assert rc == 2 and any(re.search(re.escape(str(p)) + "[ :]", err) for p in outputs), (
            where
        )  # names the file
        assert _files(folder) == before, "a refused command wrote something: " + where
        return
    if case.unreadable:  # scrub reads on past bad lines to the unreadable one; dedup stops at the first
        problem = "cannot read further" if command == "scrub" else ""
        assert rc == 1 and re.search(re.escape(str(case.src)) + r":\d+: " + problem, err), where
    assert rc in (0, 1, 2), where
    if rc != 0 and (command == "dedup" or case.unreadable):  # (scrub skips bad lines and writes the rest)
        for p in outputs:  # nothing replaced or half-written
            assert _files(folder).get(str(p.relative_to(folder))) == before.get(str(p.relative_to(folder))), (
                where
            )


@pytest.mark.parametrize("command", ["dedup", "scrub"])
def test_fuzz_cli(command, tmp_path, capsys, monkeypatch):
    old_umask = os.umask(0o022)
    try:
        rng = random.Random(f"{SEED}-{command}")
        outcomes: dict[int, int] = {}
        for n in range(CASES):
            folder = tmp_path / f"case{n:03d}"
            case = make_case(rng, folder, command, LAYOUTS[n % len(LAYOUTS)])  # each layout 3 times
            before = _files(folder)
            rc, err = _run(capsys, [command, str(case.src), str(case.out)])
            outcomes[rc] = outcomes.get(rc, 0) + 1
            outputs = [case.out, dups_path(case.out)] if command == "dedup" else [case.out]
            _check_common(command, case, rc, err, before, folder, outputs)
            if case.refused or case.unreadable:
                continue
            (_check_dedup if command == "dedup" else _check_scrub)(case, rc, err)
    finally:
        os.umask(old_umask)
    assert set(outcomes) == {0, 1, 2}, outcomes  # the seed exercises success, bad content and refusals


def _read_output(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return raw


def _check_mode(case: Case) -> None:
    want = 0o640 if case.layout == "existing_out" else 0o644  # the replaced file's mode, else the umask's
    assert case.out.stat().st_mode & 0o777 == want, case.layout


def _check_dedup(case: Case, rc: int, err: str) -> None:
    bad, good = oracle(case.data)
    where = f"{case.layout} {case.src.name}: exit {rc}: {err[-600:]!r}"
    if bad:  # the first bad line stops the command, named by file and line
        assert rc == 1 and f"{case.src}:{bad[0]}: " in err, where
        return
    assert rc == 0, where
    kept = _read_output(case.out).decode().split("\n")[:-1]
    dups = [json.loads(x) for x in _read_output(dups_path(case.out)).decode().splitlines()]
    assert len(kept) + len(dups) == len(good), where
    assert all(k in good for k in kept), where  # input lines verbatim
    _check_mode(case)


def _check_scrub(case: Case, rc: int, err: str) -> None:
    bad, good = oracle(case.data)
    where = f"{case.layout} {case.src.name}: exit {rc}: {err[-600:]!r}"
    reported = [int(m) for m in re.findall(re.escape(str(case.src)) + r":(\d+): ", err)]
    assert reported == bad, where  # every bad line named, by file and line, and no other
    assert rc == (1 if bad else 0), where
    out = [json.loads(x) for x in _read_output(case.out).decode("utf-8").split("\n")[:-1]]
    assert [{k: v for k, v in r.items() if k not in ("text", "pii")} for r in out] == [
        {k: v for k, v in json.loads(t).items() if k not in ("text", "pii")} for t in good
    ], where  # every good record, in order, its other fields kept
    for rec in out:
        assert isinstance(rec["text"], str) and "@example.com" not in rec["text"], where
        assert all(set(s) == {"type", "start", "end"} for s in rec["pii"]), where
    _check_mode(case)


def test_outputs_respect_the_umask(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "alpha beta"}\n{"text": "mail a@example.com"}\n')
    old = os.umask(0o027)
    try:
        assert _run(capsys, ["dedup", str(src), str(tmp_path / "d.jsonl")])[0] == 0
        assert _run(capsys, ["scrub", str(src), str(tmp_path / "s.jsonl")])[0] == 0
    finally:
        os.umask(old)
    for name in ("d.jsonl", "d.dups.jsonl", "s.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def _lmforge() -> Path:
    exe = REPO / ".venv" / "bin" / "lmforge"
    return exe if exe.exists() else Path(sys.executable).with_name("lmforge")


def test_entry_point_keeps_the_input(tmp_path):
    """The issue's two reproductions through the installed `lmforge` command."""
    src = tmp_path / "X.jsonl.tmp"
    src.write_bytes(b'{"id": 1, "text": "alpha beta"}\n{"id": 2, "text": "alpha beta"}\n\xff\xfe\n')
    before = _sha(src)
    proc = subprocess.run(
        [str(_lmforge()), "dedup", str(src), str(tmp_path / "X.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and f"{src}:3: not valid UTF-8" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and _sha(src) == before
    proc = subprocess.run(
        [str(_lmforge()), "scrub", str(src), str(src)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "is the input" in proc.stderr, proc.stderr
    assert _sha(src) == before and sorted(p.name for p in tmp_path.iterdir()) == ["X.jsonl.tmp"]


def test_compressed_outputs_by_name(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "alpha beta gamma"}\n{"id": 2, "text": "alpha beta gamma"}\n')
    assert _run(capsys, ["dedup", str(src), str(tmp_path / "d.jsonl.zst")])[0] == 0
    assert _read_output(tmp_path / "d.jsonl.zst").decode() == '{"id": 1, "text": "alpha beta gamma"}\n'
    dups = _read_output(tmp_path / "d.dups.jsonl.zst").decode()
    assert json.loads(dups) == {"id": 2, "duplicate_of": 1, "jaccard_estimate": 1.0}
    assert _run(capsys, ["scrub", str(tmp_path / "d.jsonl.zst"), str(tmp_path / "s.jsonl.gz")])[0] == 0
    assert json.loads(_read_output(tmp_path / "s.jsonl.gz")) == {
        "id": 1,
        "text": "alpha beta gamma",
        "pii": [],
    }
