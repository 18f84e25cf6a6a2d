"""Stage `collect`: gather documents from the configured sources and mix them.

The default source, `pydocs`, is the built-in offline corpus: docstrings of the Python standard
library (and optionally installed packages) read with `ast` from the `.py` files, never imported.
Its metadata (`package, module, qualname, kind, signature, path, lineno`) also feeds the alignment
data later in the lifecycle.
"""

from __future__ import annotations

import ast
import heapq
import logging
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from conf.collect import CollectConfig, PydocsSource
from tasks.common.artifacts import Manifest
from tasks.common.data import Document, ShardWriter
from tasks.common.jsonl import JsonlWriter
from tasks.common.splits import hash_rank
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.sources import CollectError, SourceStats, files_documents, hf_documents, warc_documents

log = logging.getLogger(__name__)
STAGE_VERSION = 3  # 2: other source kinds, rejects.jsonl; 3: a capped source samples by hash_rank (sha256)

SKIP_DIRS = {"test", "tests", "__pycache__", "site-packages", "dist-packages", "idle_test", "lib2to3"}
REJECTS_FILE = "rejects.jsonl"
__all__ = ["CollectError", "SourceStats", "collect"]


# ---------------------------------------------------------------------------------------------
# pydocs: docstrings via ast


def package_roots(packages: list[str]) -> list[tuple[str, Path]]:
    """(package label, folder or file) for 'stdlib' and installed top-level packages, without importing."""
    import importlib.util

    roots: list[tuple[str, Path]] = []
    for name in packages:
        if name == "stdlib":
            roots.append(("stdlib", Path(sysconfig.get_paths()["stdlib"])))
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise CollectError(f"collect.sources[pydocs].packages: package {name!r} is not installed")
        if spec.submodule_search_locations:
            roots.append((name, Path(next(iter(spec.submodule_search_locations)))))
        elif spec.origin and spec.origin.endswith(".py"):
            roots.append((name, Path(spec.origin)))
    return roots


def module_files(label: str, root: Path, include_private: bool) -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) in sorted, deterministic order."""
    if root.is_file():
        yield root.stem, root
        return
    base = root.name if label != "stdlib" else ""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not include_private and any(p.startswith("_") and p != "__main__" for p in parts):
            continue
        if parts and parts[-1] == "__main__":
            continue
        module = ".".join([base, *parts] if base else parts) or base
        if module:
            yield module, path


def _signature(node: ast.AST) -> str:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return f"({ast.unparse(node.args)})"
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        return f"({bases})" if bases else ""
    return ""


def docstrings(tree: ast.Module, include_private: bool) -> Iterator[tuple[str, str, ast.AST, str]]:
    """(qualname, kind, node, docstring) for the module, its classes, functions and methods."""
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield "", "module", tree, doc

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str, ast.AST, str]]:
        for node in body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if not include_private and node.name.startswith("_"):
                continue
            qualname = f"{prefix}{node.name}"
            kind = "class" if isinstance(node, ast.ClassDef) else ("method" if prefix else "function")
            d = ast.get_docstring(node, clean=True)
            if d:
                yield qualname, kind, node, d
            if isinstance(node, ast.ClassDef):
                yield from walk(node.body, f"{qualname}.")

    yield from walk(tree.body, "")


def read_python(path: Path, stats: SourceStats) -> str:
    """Source text; undecodable bytes are replaced (and counted) rather than dropping the file."""
    return stats.decode(path.read_bytes())


def pydocs_documents(src: PydocsSource, stats: SourceStats) -> Iterator[Document]:
    """One document per docstring, in module order; its metadata is what align_data turns into prompts."""
    seen: set[str] = set()
    for label, root in package_roots(src.packages):
        for module, path in module_files(label, root, src.include_private):
            try:
                tree = ast.parse(read_python(path, stats), filename=str(path))
            except (SyntaxError, ValueError, OSError) as e:
                stats.problem("unparseable_file", path, e, line=getattr(e, "lineno", None))
                continue
            for qualname, kind, node, text in docstrings(tree, src.include_private):
                if len(text) < src.min_chars:
                    stats.rejects["too_short"] += 1
                    continue
                doc_id = f"pydocs:{module}:{qualname}" if qualname else f"pydocs:{module}"
                if doc_id in seen:  # the same name defined twice (e.g. per-platform branches)
                    doc_id = f"{doc_id}@{getattr(node, 'lineno', 1)}"
                seen.add(doc_id)
                yield Document(
                    id=doc_id,
                    text=text,
                    source=src.label,
                    meta={
                        "package": label,
                        "module": module,
                        "qualname": qualname,
                        "kind": kind,
                        "signature": _signature(node),
                        "path": str(path),
                        "lineno": getattr(node, "lineno", 1),
                    },
                )


# ---------------------------------------------------------------------------------------------
# mixing


SOURCE_READERS = {
    "pydocs": pydocs_documents,
    "files": files_documents,
    "hf": hf_documents,
    "warc": warc_documents,
}


def take(docs: Iterable[Document], cap: int | None) -> Iterator[Document]:
    """At most `cap` documents, those of lowest `hash_rank(id)`, in their original order: a spread sample,
    not a source's first files, and the same on every run. Holds only `cap` documents in memory."""
    if cap is None:
        yield from docs
        return
    heap: list[tuple[int, int, Document]] = []  # max-heap on rank (negated) of the `cap` lowest ranks
    for seq, doc in enumerate(docs):
        item = (-hash_rank(doc.id), seq, doc)
        if len(heap) < cap:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heappushpop(heap, item)
    for _, _, doc in sorted(heap, key=lambda t: t[1]):
        yield doc


def unique_ids(docs: Iterable[Document]) -> Iterator[Document]:
    """Document ids must be unique downstream: a repeated id (the same id field twice) gets `#n`."""
    seen: dict[str, int] = {}
    for doc in docs:
        n = seen.get(doc.id, 0)
        seen[doc.id] = n + 1
        if n:
            doc.id = f"{doc.id}#{n + 1}"
        yield doc


def quotas(cfg: CollectConfig) -> list[int | None]:
    """Each source's cap: its own `max_docs`, and its weighted share of the total cap."""
    total_weight = sum(s.weight for s in cfg.sources)
    caps: list[int | None] = []
    for s in cfg.sources:
        share = int(cfg.max_docs * s.weight / total_weight) if cfg.max_docs else None
        caps.append(min(c for c in (s.max_docs, share) if c is not None) if (s.max_docs or share) else None)
    return caps


def collect(cfg: CollectConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    """Read each source up to its quota into the document shards; list what was skipped in rejects.jsonl."""
    rejects_path = out / REJECTS_FILE
    per_source: dict[str, SourceStats] = {}
    with ShardWriter(out, cfg.shard_docs) as writer, JsonlWriter(rejects_path) as rejects:
        for src, cap in zip(cfg.sources, quotas(cfg), strict=True):
            stats = SourceStats(label=src.label, on_error=cfg.on_error, rejects_sink=rejects)
            for doc in take(unique_ids(SOURCE_READERS[src.kind](src, stats)), cap):
                writer.write(doc)
                stats.docs += 1
                stats.chars += len(doc.text)
            per_source[src.label] = stats
            log.info(
                "collect %s: %d documents, rejects %s", src.label, stats.docs, dict(stats.rejects) or "none"
            )
    if writer.count == 0:
        raise CollectError(
            "collect produced no documents: check collect.sources (paths, globs, text_field, min_chars, "
            f"max_docs) and the problems listed in {rejects_path}"
        )
    counts = collect_counts(per_source, writer)
    sources = {src.label: source_summary(src.kind, per_source[src.label]) for src in cfg.sources}
    log_.log_dict(sources, "collect/sources.json")
    if counts["skipped_errors"]:
        log_.log_artifact(rejects_path, "collect")
    log.info(
        "collected %d documents (%d chars) from %d sources", writer.count, writer.chars, len(cfg.sources)
    )
    return StageReport(
        counts=counts,
        metrics={"mean_doc_chars": counts["chars"] / counts["documents"]},
        extra={"sources": sources, "rejects": REJECTS_FILE},
    )


def source_summary(kind: str, stats: SourceStats) -> dict:
    """What one source gave: in the manifest (`extra.sources`) and in MLflow (collect/sources.json)."""
    return {
        "kind": kind,
        "docs": stats.docs,
        "chars": stats.chars,
        "decode_replacements": stats.decode_replacements,
        "rejects": dict(stats.rejects),
    }


def collect_counts(per_source: dict[str, SourceStats], writer: ShardWriter) -> dict[str, int]:
    """The manifest counts: per source (docs, chars, rejects by reason), then the totals."""
    counts: dict[str, int] = {"decode_replacements": 0, "skipped_errors": 0}
    for label, stats in per_source.items():
        counts[f"docs_{label}"] = stats.docs
        counts[f"chars_{label}"] = stats.chars
        for reason, n in sorted(stats.rejects.items()):
            counts[f"rejected_{label}_{reason}"] = n
        counts["decode_replacements"] += stats.decode_replacements
        counts["skipped_errors"] += stats.problems
    counts["documents"] = writer.count
    counts["chars"] = writer.chars
    return counts
