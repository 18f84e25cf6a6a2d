"""The `collect` stage: pydocs, local files (every format, plain and compressed), HF datasets, WARC,
bad input (replacement counting, corrupt files under skip and fail), empty results, caps and weights."""

from __future__ import annotations

import gzip
import io
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from pydantic import ValidationError

from conf.collect import CollectConfig
from tasks import collect as collect_mod
from tasks.collect import CollectError, collect
from tasks.common.data import Document, read_shard
from tasks.common.splits import hash_rank
from tasks.common.stage import StageSpec, run_stage
from tasks.common.tracking import MetricLogger

TEXTS = [f"Document number {i} talks about topic {i * 7} in plain words." for i in range(6)]


def run(tmp_path: Path, name: str = "out", **cfg) -> tuple[dict, list[Document], list[dict]]:
    out = tmp_path / name
    out.mkdir()
    report = collect(CollectConfig.model_validate(cfg), {}, out, MetricLogger())
    docs = [d for p in sorted((out / "documents").glob("shard-*")) for d in read_shard(p)]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    return report.counts, docs, rejects


def files(*paths: str, **kw) -> dict:
    return {"kind": "files", "paths": list(paths), **kw}


def jsonl_bytes(texts: list[str]) -> bytes:
    return "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)).encode()


# ---------------------------------------------------------------------------------------------
# pydocs


@pytest.fixture
def tiny_package(tmp_path, monkeypatch) -> str:
    pkg = tmp_path / "site" / "lmf_tinypkg"
    pkg.mkdir(parents=True)
    long = "It explains what the code does at enough length to pass the minimum size. " * 2
    (pkg / "__init__.py").write_text(f'"""The tiny package. {long}"""\n')
    (pkg / "shapes.py").write_text(
        textwrap.dedent(f'''
        """Shapes module. {long}"""

        def area(width, height=1):
            """Area of a rectangle. {long}"""

        def short():
            """Too short."""

        class Square(object):
            """A square. {long}"""

            def grow(self, by: int) -> None:
                """Grow the square. {long}"""

            def _hidden(self):
                """Private. {long}"""
        ''')
    )
    (pkg / "_private.py").write_text(f'"""Private module. {long}"""\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return "lmf_tinypkg"


def test_pydocs_is_deterministic_and_carries_metadata(tmp_path, tiny_package):
    cfg = {"sources": [{"kind": "pydocs", "packages": [tiny_package], "min_chars": 100}]}
    counts, docs, rejects = run(tmp_path, "a", **cfg)
    _, again, _ = run(tmp_path, "b", **cfg)
    assert (tmp_path / "a/documents/shard-00000.jsonl").read_bytes() == (
        tmp_path / "b/documents/shard-00000.jsonl"
    ).read_bytes()
    ids = [d.id for d in docs]
    assert ids == [d.id for d in again]
    assert ids == [
        "pydocs:lmf_tinypkg",
        "pydocs:lmf_tinypkg.shapes",
        "pydocs:lmf_tinypkg.shapes:area",
        "pydocs:lmf_tinypkg.shapes:Square",
        "pydocs:lmf_tinypkg.shapes:Square.grow",
    ]
    grow = docs[-1]
    assert grow.meta == {
        "package": "lmf_tinypkg",
        "module": "lmf_tinypkg.shapes",
        "qualname": "Square.grow",
        "kind": "method",
        "signature": "(self, by: int)",
        "path": str(Path(grow.meta["path"])),
        "lineno": 13,  # the source starts with an empty line
    }
    assert grow.meta["path"].endswith("lmf_tinypkg/shapes.py")
    assert docs[2].meta["signature"] == "(width, height=1)" and docs[3].meta["signature"] == "(object)"
    assert counts["rejected_pydocs_too_short"] == 1 and counts["documents"] == 5 and rejects == []


def test_pydocs_installed_packages_respect_max_docs(tmp_path):
    counts, docs, _ = run(
        tmp_path, sources=[{"kind": "pydocs", "packages": ["json", "email"], "max_docs": 25}]
    )
    assert counts["documents"] == 25 == len({d.id for d in docs})
    assert {d.meta["package"] for d in docs} == {"json", "email"} and all(len(d.text) >= 200 for d in docs)
    assert all(d.meta["module"].split(".")[0] == d.meta["package"] for d in docs)


# ---------------------------------------------------------------------------------------------
# files


def _write(path: Path, data: bytes, compression: str) -> Path:
    if compression == ".gz":
        data = gzip.compress(data)
    elif compression == ".zst":
        data = zstandard.ZstdCompressor().compress(data)
    path = path.with_name(path.name + compression)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_record_formats(tmp_path, fmt, compression):
    texts = TEXTS[:3]
    if fmt == "jsonl":
        data = jsonl_bytes(texts)
    elif fmt == "json":
        data = json.dumps([{"id": f"r{i}", "body": t} for i, t in enumerate(texts)], indent=2).encode()
    elif fmt == "csv":
        data = ("id,body\n" + "".join(f'r{i},"{t}, with a comma"\n' for i, t in enumerate(texts))).encode()
    else:
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(3)], "body": texts}), buf)
        data = buf.getvalue()
    path = _write(tmp_path / f"data.{fmt}", data, compression)
    field = "text" if fmt == "jsonl" else "body"
    counts, docs, rejects = run(tmp_path, sources=[files(str(path), text_field=field, name="mine")])
    expected = [t + ", with a comma" if fmt == "csv" else t for t in texts]
    assert [d.text for d in docs] == expected
    assert [d.id for d in docs] == ["mine:r0", "mine:r1", "mine:r2"]
    assert all(d.source == "mine" and d.meta["path"] == str(path) for d in docs)
    assert counts["docs_mine"] == 3 and counts["chars_mine"] == sum(map(len, expected)) and rejects == []


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_text_files_one_document_each_by_glob(tmp_path, compression):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    _write(tmp_path / "corpus" / "a.txt", b"First file.\nTwo lines.", compression)
    _write(tmp_path / "corpus" / "sub" / "b.md", b"# Title\n\nMarkdown body.", compression)
    (tmp_path / "corpus" / "notes.log").write_text("not matched by the globs")
    pattern = str(tmp_path / "corpus" / "**" / f"*.*{compression}")
    counts, docs, _ = run(
        tmp_path, sources=[files(pattern.replace("*.*", "*.txt"), pattern.replace("*.*", "*.md"))]
    )
    assert [d.text for d in docs] == ["First file.\nTwo lines.", "# Title\n\nMarkdown body."]
    assert docs[0].id == f"files:{tmp_path / 'corpus' / ('a.txt' + compression)}"
    assert counts["documents"] == 2


def test_json_lines_in_a_json_file_and_ids_from_lines(tmp_path):
    (tmp_path / "d.json").write_text('{"text": "one"}\n{"text": "two", "id": ""}\n')
    _, docs, _ = run(tmp_path, sources=[files(str(tmp_path / "d.json"))])
    assert [(d.id, d.text) for d in docs] == [
        (f"files:{tmp_path}/d.json:1", "one"),
        (f"files:{tmp_path}/d.json:2", "two"),
    ]


def test_broken_json_array_and_missing_csv_column_are_located(tmp_path):
    (tmp_path / "a.json").write_text('\n[\n  {"text": "one"},\n  {"text": "two",}\n]\n')
    (tmp_path / "b.csv").write_text("id,body\n1,hello\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "line\u2028separator"}, ensure_ascii=False) + "\n")
    counts, docs, rejects = run(tmp_path, sources=[files(str(tmp_path / "*.*"))])
    assert [(Path(r["file"]).name, r["reason"], r["line"]) for r in rejects] == [
        ("a.json", "bad_json", 4),
        ("b.csv", "bad_schema", 1),
    ]
    assert "columns: ['id', 'body']" in rejects[1]["error"]
    assert [d.text for d in docs] == ["line\u2028separator"]


def test_repeated_ids_are_made_unique(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n')
    _, docs, _ = run(tmp_path, sources=[files(str(tmp_path / "d.jsonl"))])
    assert [d.id for d in docs] == ["files:x", "files:x#2"]


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets (local data only)


def test_hf_json_builder_with_max_docs_and_id_field(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(jsonl_bytes(TEXTS))
    src = {
        "kind": "hf",
        "path": "json",
        "data_files": [str(tmp_path / "d.jsonl")],
        "id_field": "id",
        "max_docs": 4,
    }
    counts, docs, _ = run(tmp_path, sources=[src])
    assert [d.text for d in docs] == TEXTS[:4]  # a streamed dataset: the first max_docs records
    assert [d.id for d in docs] == ["hf:r0", "hf:r1", "hf:r2", "hf:r3"]
    assert docs[0].meta == {"dataset": "json", "subset": None, "split": "train", "index": 0}
    assert counts["docs_hf"] == 4


def test_hf_local_folder_dataset(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in TEXTS[:2]))
    _, docs, _ = run(tmp_path, sources=[{"kind": "hf", "path": str(folder), "text_field": "content"}])
    assert [(d.id, d.text) for d in docs] == [("hf:train:0", TEXTS[0]), ("hf:train:1", TEXTS[1])]


def test_hf_missing_dataset_is_reported(tmp_path):
    (tmp_path / "ok.txt").write_text("keeps the corpus non-empty")
    src = {"kind": "hf", "path": "json", "data_files": [str(tmp_path / "missing.jsonl")]}
    counts, _, rejects = run(tmp_path, sources=[src, files(str(tmp_path / "ok.txt"))])
    assert counts["rejected_hf_unreadable_source"] == 1
    assert rejects[0]["reason"] == "unreadable_source" and "FileNotFoundError" in rejects[0]["error"]
    with pytest.raises(CollectError, match="missing.jsonl"):
        run(tmp_path, "fail", sources=[src], on_error="fail")


# ---------------------------------------------------------------------------------------------
# WARC


def write_warc(path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    article = (
        "<html><head><title>Sorting</title></head><body><nav>Home | About | Contact</nav><article>"
        "<h1>On sorting</h1><p>Sorting algorithms arrange the elements of a list in a certain order. "
        "The most "
        "frequently used orders are numerical order and lexicographical order.</p><p>Efficient sorting is "
        "important for optimizing the efficiency of other algorithms. Caf\u00e9 au lait.</p></article>"
        "<footer>Copyright 2026</footer></body></html>"
    )
    pages = [
        ("http://example.com/sorting", "text/html; charset=iso-8859-1", article.encode("latin-1")),
        ("http://example.com/logo.png", "image/png", b"\x89PNG\r\n\x1a\n"),
        ("http://example.com/hashing", "text/html", article.replace("orting", "earching").encode()),
    ]
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        writer.write_record(
            writer.create_warc_record("http://example.com/", "warcinfo", payload=io.BytesIO(b"x"))
        )
        for url, ctype, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )


def test_warc_html_to_text(tmp_path):
    write_warc(tmp_path / "crawl.warc.gz")
    counts, docs, _ = run(
        tmp_path, sources=[{"kind": "warc", "paths": [str(tmp_path / "*.warc.gz")], "min_chars": 50}]
    )
    assert [d.meta["url"] for d in docs] == ["http://example.com/sorting", "http://example.com/hashing"]
    assert "Sorting algorithms arrange the elements" in docs[0].text and "Café au lait" in docs[0].text
    assert "Home | About" not in docs[0].text and "Copyright" not in docs[0].text
    assert docs[0].id.startswith("warc:urn:uuid:") and docs[0].meta["path"].endswith("crawl.warc.gz")
    assert counts["rejected_warc_not_html"] == 1 and counts["decode_replacements"] == 0


def test_truncated_warc_is_reported(tmp_path):
    write_warc(tmp_path / "full.warc.gz")
    data = (tmp_path / "full.warc.gz").read_bytes()
    (tmp_path / "cut.warc.gz").write_bytes(data[: len(data) - 40])
    src = {"kind": "warc", "paths": [str(tmp_path / "cut.warc.gz")], "min_chars": 50}
    counts, docs, rejects = run(tmp_path, sources=[src])
    assert len(docs) == 1 and counts["rejected_warc_unreadable_file"] == 1
    assert rejects[0]["file"].endswith("cut.warc.gz") and rejects[0]["offset"] > 0


# ---------------------------------------------------------------------------------------------
# bad input


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(
        b"Caf\xe9 au lait, \xff\xfe and a genuine \xef\xbf\xbd replacement char."
    )
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ol\xe9 from JSON"}\n')
    counts, docs, rejects = run(tmp_path, sources=[files(str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"))])
    assert docs[0].text == "Caf\ufffd au lait, \ufffd\ufffd and a genuine \ufffd replacement char."
    assert docs[1].text == "ol\ufffd from JSON"
    assert counts["decode_replacements"] == 4 and rejects == []


def test_corrupt_gzip_and_broken_json_line_are_skipped_and_reported(tmp_path):
    lines = jsonl_bytes([f"record {i}" for i in range(3000)])
    gz = gzip.compress(lines)
    (tmp_path / "cut.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    (tmp_path / "broken.jsonl").write_text(
        '{"text": "fine"}\n{"text": "oops",\n{"nope": 1}\n{"text": "also fine"}\n'
    )
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    counts, docs, rejects = run(
        tmp_path, sources=[files(str(tmp_path / "*.jsonl*"), str(tmp_path / "*.parquet"))]
    )
    from_gz = [d for d in docs if Path(d.meta["path"]).name == "cut.jsonl.gz"]
    assert 0 < len(from_gz) < 3000 and from_gz[-1].meta["line"] == len(from_gz)  # what was readable is kept
    assert [d.text for d in docs if Path(d.meta["path"]).name == "broken.jsonl"] == ["fine", "also fine"]
    by_reason = {(Path(r["file"]).name, r["reason"]): r for r in rejects}
    assert by_reason[("broken.jsonl", "bad_json")]["line"] == 2
    assert by_reason[("broken.jsonl", "bad_record")]["line"] == 3
    assert by_reason[("cut.jsonl.gz", "unreadable_file")]["line"] == len(from_gz) + 1
    assert "Compressed file ended" in by_reason[("cut.jsonl.gz", "unreadable_file")]["error"]
    assert ("bad.parquet", "unreadable_file") in by_reason
    assert counts["rejected_files_bad_json"] == 1 and counts["rejected_files_bad_record"] == 1
    assert counts["rejected_files_unreadable_file"] == 2 and counts["skipped_errors"] == 4


def test_truncated_zstd_is_detected(tmp_path):
    z = zstandard.ZstdCompressor().compress(jsonl_bytes([f"record {i}" for i in range(20000)]))
    (tmp_path / "cut.jsonl.zst").write_bytes(z[: len(z) // 2])
    counts, docs, rejects = run(tmp_path, sources=[files(str(tmp_path / "cut.jsonl.zst"))])
    assert (
        0 < len(docs) < 20000
        and rejects[0]["reason"] == "unreadable_file"
        and "truncated" in rejects[0]["error"]
    )


def test_on_error_fail_names_file_and_line(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(CollectError, match=r"broken\.jsonl:2: bad_json"):
        run(tmp_path, sources=[files(str(tmp_path / "broken.jsonl"))], on_error="fail")
    gz = gzip.compress(jsonl_bytes([f"record {i}" for i in range(3000)]))
    (tmp_path / "cut.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(CollectError, match=r"cut\.jsonl\.gz:\d+: unreadable_file"):
        run(tmp_path, "b", sources=[files(str(tmp_path / "cut.jsonl.gz"))], on_error="fail")


def test_unmatched_glob_and_unknown_format_are_problems(tmp_path):
    (tmp_path / "x.docx").write_text("?")
    (tmp_path / "ok.txt").write_text("content")
    counts, docs, rejects = run(
        tmp_path, sources=[files(str(tmp_path / "nothing*.jsonl"), str(tmp_path / "*.*"))]
    )
    assert [d.text for d in docs] == ["content"]
    assert {r["reason"] for r in rejects} == {"no_files", "unsupported_format"}


def test_empty_result_fails_clearly(tmp_path):
    (tmp_path / "tiny.txt").write_text("short")
    with pytest.raises(CollectError, match="collect produced no documents"):
        run(tmp_path, sources=[files(str(tmp_path / "tiny.txt"), min_chars=100)])


# ---------------------------------------------------------------------------------------------
# mixing


def test_caps_and_weights(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_bytes(jsonl_bytes([f"{name} text {i}" for i in range(100)]))
    sources = [
        files(str(tmp_path / "a.jsonl"), name="a", weight=3),
        files(str(tmp_path / "b.jsonl"), name="b", weight=1),
    ]
    counts, docs, _ = run(tmp_path, "mix", sources=sources, max_docs=40)
    assert (counts["docs_a"], counts["docs_b"], counts["documents"]) == (30, 10, 40)
    lines = [d.meta["line"] for d in docs if d.source == "a"]
    assert lines == sorted(lines) and lines != list(range(1, 31))  # a spread sample, in file order
    _, again, _ = run(tmp_path, "again", sources=sources, max_docs=40)
    assert [d.id for d in again] == [d.id for d in docs]
    capped = [sources[0], {**sources[1], "max_docs": 5}]
    counts, _, _ = run(tmp_path, "capped", sources=capped, max_docs=40)
    assert (counts["docs_a"], counts["docs_b"]) == (30, 5)


def test_take_keeps_lowest_ranks_in_order():
    docs = [Document(id=f"d{i}", text="x", source="s") for i in range(50)]
    kept = list(collect_mod.take(docs, 7))
    expected = sorted(docs, key=lambda d: hash_rank(d.id))[:7]
    assert [d.id for d in kept] == [d.id for d in docs if d in expected]


def test_config_errors_name_the_key():
    with pytest.raises(ValidationError, match="several sources are labelled files"):
        CollectConfig(sources=[files("a"), files("b")])
    with pytest.raises(ValidationError, match="paths"):
        CollectConfig.model_validate({"sources": [{"kind": "files"}]})
    with pytest.raises(ValidationError, match="kind"):
        CollectConfig.model_validate({"sources": [{"kind": "ftp"}]})


def test_runner_writes_rejects_into_the_manifest(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "fine"}\nbroken\n')
    cfg = CollectConfig.model_validate({"sources": [files(str(tmp_path / "d.jsonl"))]})
    spec = StageSpec("collect", collect, (), collect_mod.STAGE_VERSION)
    result = run_stage(spec, SimpleNamespace(collect=cfg), {}, tmp_path / "artifacts")
    manifest = result.manifest
    assert "rejects.jsonl" in manifest.files and "documents/shard-00000.jsonl" in manifest.files
    assert manifest.counts["rejected_files_bad_json"] == 1 and manifest.counts["documents"] == 1
    assert manifest.extra["sources"]["files"]["rejects"] == {"bad_json": 1}
