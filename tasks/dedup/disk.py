"""Dedup with bounded memory: the in-memory path's decisions, computed from sorted partitions on disk.

The in-memory path (`core.cluster`) holds every record's key, every signature and a datasketch LSH
index: ~7 KB per document. This path holds one partition at a time, whatever the corpus size; each
step is a map over shards or partitions (the stage's `ShardMap`: local processes or Dask task runs),
writing its own files under a work folder, so its peak memory is one partition's rows, set by
`dedup.max_memory_mb`:

1. `sign` (per input shard): exact keys and MinHash signatures (`core.sign`), kept in the shard's work
   folder; each record's key goes to an exact partition (by key);
2. `exact` (per exact partition): sort by key, then input order: each key's first record is its group's
   representative; the others are exact duplicates of it, written out per shard;
3. `bands` (per input shard): every signed representative's band values go to a band partition;
4. `buckets` (per band partition): sort by band values: equal values in one band share an LSH bucket;
   members of a bucket are verified exactly as `core.near_clusters` does (estimated Jaccard against the
   members after it), and the accepted pairs written out;
5. `components` (here): connected components of the accepted pairs (union-find by label propagation;
   memory grows with the documents that have a near duplicate, not with the corpus);
6. `members` (per input shard): each record of a cluster with 2+ records goes to a cluster partition;
7. `keepers` (per cluster partition): each cluster keeps its longest text, then lowest id, then first
   record, and its other records become duplicates (exact, or near with the estimated Jaccard);
8. `write` (per input shard, in the stage): the kept documents and the duplicate records, in input order.

Identity with the in-memory path (tests/test_dedup_disk.py): same groups (full sha1 keys), same LSH
buckets (datasketch's bands x rows; full band values compared, never a hash), same verification per
bucket (members in group order, the same comparisons, so the same `pairs_checked`), components do not
depend on the order pairs are found, `pairs_accepted` = nodes - components, and the same keeper rule.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.shards import ShardJob, ShardMap
from tasks.dedup.core import Params, id_order, sign

KEY_WORDS = 3  # a 20-byte sha1 key as three uint64 (the last one padded)
BYTES_PER_RECORD_IN_MEMORY = 7000  # what the in-memory path needs per document (measured: README)


@dataclass(frozen=True)
class Plan:
    """Where the work lives and how it is split (plain data: it travels to cluster workers)."""

    work: str
    shards: int
    exact_parts: int
    band_parts: int
    member_parts: int
    bands: int
    rows: int


@dataclass
class DiskResult:
    """What the report needs (the in-memory `Result`'s summary attributes), without per-record lists."""

    total: int
    kept: int
    exact: int
    near: int
    cluster_sizes: dict[int, int]
    bands: int
    rows: int
    stats: dict[str, float] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return self.exact if kind == "exact" else self.near


def lsh_shape(p: Params) -> tuple[int, int]:
    """datasketch's bands x rows for the threshold and weights (what `MinHashLSH` would use)."""
    from datasketch.lsh import _optimal_param

    b, r = _optimal_param(p.threshold, p.num_perm, 1 - p.false_negative_weight, p.false_negative_weight)
    return int(b), int(r)


def partitions(rows: int, row_bytes: int, max_memory_mb: int) -> int:
    """Partitions so that one partition's rows, sorted (about 4 copies), fit in a quarter of the budget."""
    budget = max_memory_mb * 2**20 / 4
    return max(1, math.ceil(rows * row_bytes * 4 / budget))


def make_plan(work: Path, shards: int, docs_estimate: int, p: Params, max_memory_mb: int) -> Plan:
    bands, rows = lsh_shape(p)
    return Plan(
        work=str(work),
        shards=shards,
        exact_parts=partitions(docs_estimate, 8 * (KEY_WORDS + 2), max_memory_mb),
        # a band row, plus its share of the candidates' signatures read for verification (at most one per
        # group, i.e. num_perm * 4 / bands bytes per row: num_perm bytes is a safe bound)
        band_parts=partitions(docs_estimate * bands, 4 * (rows + 3) + p.num_perm, max_memory_mb),
        member_parts=partitions(docs_estimate, 200, max_memory_mb),
        bands=bands,
        rows=rows,
    )


# --- files of the work folder ------------------------------------------------------------------------


def _dir(plan: Plan, *parts: str) -> Path:
    path = Path(plan.work).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save(path: Path, array: np.ndarray) -> None:
    """Write atomically (a task rerun after a lost worker must never read half a file)."""
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _load_all(folder: Path, pattern: str, width: int, dtype: Any) -> np.ndarray:
    arrays = [np.load(f) for f in sorted(folder.glob(pattern))]
    arrays = [a for a in arrays if len(a)]
    return np.concatenate(arrays) if arrays else np.empty((0, width), dtype=dtype)


def _spread(plan: Plan, name: str, source: int, rows: np.ndarray, part_of: np.ndarray, parts: int) -> None:
    """Write `rows` into partition files `<name>/p{part}-s{source}.npy` (one per partition with rows)."""
    folder = _dir(plan, name)
    order = np.argsort(part_of, kind="stable")
    rows, part_of = rows[order], part_of[order]
    bounds = np.searchsorted(part_of, np.arange(parts + 1))
    for part in range(parts):
        lo, hi = bounds[part], bounds[part + 1]
        if hi > lo:
            _save(folder / f"p{part:05d}-s{source:05d}.npy", rows[lo:hi])


def _spread_json(plan: Plan, name: str, source: int, rows: list[list[Any]], part_of: list[int]) -> None:
    folder = _dir(plan, name)
    by_part: dict[int, list[list[Any]]] = {}
    for row, part in zip(rows, part_of, strict=True):
        by_part.setdefault(part, []).append(row)
    for part, chunk in by_part.items():
        path = folder / f"p{part:05d}-s{source:05d}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(chunk, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


def _load_json(folder: Path, pattern: str) -> Iterator[list[Any]]:
    for f in sorted(folder.glob(pattern)):
        yield from json.loads(f.read_text(encoding="utf-8"))


def _keys(digests: list[bytes]) -> np.ndarray:
    padded = b"".join(d.ljust(8 * KEY_WORDS, b"\0") for d in digests)
    return np.frombuffer(padded, dtype=">u8").astype(np.uint64).reshape(len(digests), KEY_WORDS)


# --- 1. sign -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSigned:
    records: int
    chars: int
    seconds: float


def sign_step(p: Params, plan: Plan, job: ShardJob) -> ShardSigned:
    """Sign one input shard; keep its signatures, lengths and ids; spread its keys over exact partitions."""
    signed = sign(((d.id, d.text) for d in job.documents()), replace(p, workers=1))
    folder = _dir(plan, "shards", f"{job.index:05d}")
    _save(folder / "sigs.npy", signed.sigs)
    _save(folder / "first.npy", np.asarray(signed.first, dtype=np.int64))
    _save(folder / "counts.npy", signed.counts.astype(np.int64))
    _save(folder / "lengths.npy", np.asarray(signed.lengths, dtype=np.int64))
    (folder / "ids.json").write_text(json.dumps(signed.ids, ensure_ascii=False), encoding="utf-8")
    n = len(signed.ids)
    keys = _keys(signed.keys) if n else np.empty((0, KEY_WORDS), np.uint64)
    rows = np.column_stack([keys, np.full(n, job.index, np.uint64), np.arange(n, dtype=np.uint64)])
    _spread(plan, "exact", job.index, rows, (keys[:, 0] % np.uint64(plan.exact_parts)).astype(np.int64)
            if n else np.empty(0, np.int64), plan.exact_parts)  # fmt: skip
    return ShardSigned(n, sum(signed.lengths), signed.seconds)


# --- 2. exact ----------------------------------------------------------------------------------------


def exact_step(plan: Plan, part: int) -> int:
    """Groups of one exact partition: returns how many distinct keys it holds; writes each duplicate as
    (shard, local index, representative's shard, representative's local index), per shard."""
    rows = _load_all(Path(plan.work) / "exact", f"p{part:05d}-s*.npy", KEY_WORDS + 2, np.uint64)
    if not len(rows):
        return 0
    order = np.lexsort(tuple(rows[:, c] for c in range(KEY_WORDS + 1, -1, -1)))  # key, then input order
    rows = rows[order]
    same = np.all(rows[1:, :KEY_WORDS] == rows[:-1, :KEY_WORDS], axis=1)
    new = np.concatenate(([True], ~same))
    first_of = np.maximum.accumulate(np.where(new, np.arange(len(rows)), 0))
    dup = ~new
    pairs = np.column_stack([rows[dup, KEY_WORDS], rows[dup, KEY_WORDS + 1],
                             rows[first_of[dup], KEY_WORDS], rows[first_of[dup], KEY_WORDS + 1]])  # fmt: skip
    _spread(plan, "exactdup", part, pairs.astype(np.int64), pairs[:, 0].astype(np.int64), plan.shards)
    return int(new.sum())


def _shard_duplicates(plan: Plan, shard: int) -> np.ndarray:
    """(local index, rep shard, rep local) of the shard's exact duplicates, by local index."""
    folder = Path(plan.work) / "exactdup"
    rows = _load_all(folder, f"p{shard:05d}-s*.npy", 4, np.int64)
    return rows[np.argsort(rows[:, 1], kind="stable")][:, 1:] if len(rows) else np.empty((0, 3), np.int64)


# --- 3. bands ----------------------------------------------------------------------------------------


def _global(offsets: np.ndarray, shard: np.ndarray | int, local: np.ndarray | int) -> Any:
    return offsets[shard] + local


def bands_step(plan: Plan, offsets: list[int], job: ShardJob) -> int:
    """Band values of the shard's signed representatives, spread over band partitions; returns how many."""
    folder = Path(plan.work) / "shards" / f"{job.index:05d}"
    sigs, first, counts = (np.load(folder / f) for f in ("sigs.npy", "first.npy", "counts.npy"))
    dups = _shard_duplicates(plan, job.index)[:, 0]
    keep = (counts > 0) & ~np.isin(first, dups)
    reps = first[keep] + offsets[job.index]
    sigs = sigs[keep]
    r = plan.rows
    blocks, parts = [], []
    for b in range(plan.bands):
        values = sigs[:, b * r : (b + 1) * r]
        mix = (values.astype(np.uint64) * _MIX[:r]).sum(axis=1, dtype=np.uint64) + np.uint64(b)
        blocks.append(np.column_stack([np.full(len(reps), b, np.uint32), values,
                                       (reps & 0xFFFFFFFF).astype(np.uint32),
                                       (reps >> 32).astype(np.uint32)]))  # fmt: skip
        parts.append((mix % np.uint64(plan.band_parts)).astype(np.int64))
    if reps.size:
        _spread(plan, "bands", job.index, np.concatenate(blocks), np.concatenate(parts), plan.band_parts)
    return int(reps.size)


_MIX = np.array([(0x9E3779B97F4A7C15 * (2 * k + 1)) % 2**64 for k in range(1024)], dtype=np.uint64)


# --- 4. buckets --------------------------------------------------------------------------------------


class Signatures:
    """Signature rows of representatives by global index, read from the shards' files: each shard's file is
    memory-mapped only while its rows are copied out, so no mapping outlives a call (its pages would count
    towards the process's memory)."""

    def __init__(self, plan: Plan, offsets: list[int]):
        self.plan, self.offsets = plan, np.asarray(offsets, dtype=np.int64)

    def rows(self, index: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), 0), np.uint32)
        for s in np.unique(shard):
            folder = Path(self.plan.work) / "shards" / f"{int(s):05d}"
            sigs = np.load(folder / "sigs.npy", mmap_mode="r")
            pick = shard == s
            local = index[pick] - self.offsets[s]
            block = np.array(sigs[np.searchsorted(np.load(folder / "first.npy"), local)])
            del sigs
            if out.shape[1] == 0:
                out = np.empty((len(index), block.shape[1]), np.uint32)
            out[pick] = block
        return out


@dataclass(frozen=True)
class BucketStats:
    buckets: int
    checked: int


def buckets_step(p: Params, plan: Plan, offsets: list[int], part: int) -> BucketStats:
    """LSH buckets of one band partition, verified as `core.near_clusters` does; writes accepted pairs."""
    r = plan.rows
    rows = _load_all(Path(plan.work) / "bands", f"p{part:05d}-s*.npy", r + 3, np.uint32)
    if not len(rows):
        return BucketStats(0, 0)
    reps = rows[:, r + 1].astype(np.int64) | (rows[:, r + 2].astype(np.int64) << 32)
    order = np.lexsort((reps, *(rows[:, c] for c in range(r, -1, -1))))  # band, values, then group order
    rows, reps = rows[order], reps[order]
    new = np.concatenate(([True], np.any(rows[1:, : r + 1] != rows[:-1, : r + 1], axis=1)))
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(rows)))
    crowded = sizes > 1
    candidates = np.unique(reps[np.repeat(crowded, sizes)]) if p.verify else np.empty(0, np.int64)
    table = Signatures(plan, offsets).rows(candidates)  # one read per shard for the whole partition
    pairs: list[np.ndarray] = []
    checked = 0
    for start, size in zip(starts[crowded], sizes[crowded], strict=True):
        members = reps[start : start + size]
        if not p.verify:
            pairs.append(np.column_stack([np.full(size - 1, members[0]), members[1:]]))
            continue
        member_sigs = table[np.searchsorted(candidates, members)]
        pending = np.arange(size)
        while len(pending) > 1:  # as core.near_clusters: each member against all later ones at once
            a, rest = pending[0], pending[1:]
            sims = np.count_nonzero(member_sigs[rest] == member_sigs[a], axis=1) / p.num_perm
            checked += len(rest)
            hit = rest[sims >= p.threshold]
            if len(hit):
                pairs.append(np.column_stack([np.full(len(hit), members[a]), members[hit]]))
            pending = rest[sims < 1.0]
    found = np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)
    _save(_dir(plan, "pairs") / f"p{part:05d}.npy", found.astype(np.int64))
    return BucketStats(int(crowded.sum()), checked)


# --- 5. components -----------------------------------------------------------------------------------


def components(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, root of each) over the accepted pairs: the smallest group of each component is its root."""
    pairs = _load_all(Path(plan.work) / "pairs", "p*.npy", 2, np.int64)
    if not len(pairs):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    nodes, edges = np.unique(pairs, return_inverse=True)
    edges = edges.reshape(-1, 2)
    label = np.arange(len(nodes))
    while True:  # min-label propagation with pointer jumping: union-find, vectorized
        low = np.minimum(label[edges[:, 0]], label[edges[:, 1]])
        before = label.copy()
        np.minimum.at(label, edges[:, 0], low)
        np.minimum.at(label, edges[:, 1], low)
        label = label[label]
        if np.array_equal(label, before):
            break
    return nodes, nodes[label]


# --- 6. members --------------------------------------------------------------------------------------


def members_step(plan: Plan, offsets: list[int], job: ShardJob) -> None:
    """Records of clusters with 2+ records: [cluster root, index, length, group, id] per cluster partition."""
    folder = Path(plan.work) / "shards" / f"{job.index:05d}"
    lengths = np.load(folder / "lengths.npy")
    ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
    offs = np.asarray(offsets, dtype=np.int64)
    n = len(lengths)
    group = np.arange(n, dtype=np.int64) + offs[job.index]
    dups = _shard_duplicates(plan, job.index)
    if len(dups):
        group[dups[:, 0]] = offs[dups[:, 1]] + dups[:, 2]
    all_dups = _load_all(Path(plan.work) / "exactdup", "p*-s*.npy", 4, np.int64)
    shared = np.unique(offs[all_dups[:, 2]] + all_dups[:, 3]) if len(all_dups) else np.empty(0, np.int64)
    nodes = np.load(Path(plan.work) / "components.npy")
    roots = np.load(Path(plan.work) / "roots.npy")
    at = np.clip(np.searchsorted(nodes, group), 0, max(len(nodes) - 1, 0))
    in_near = (nodes[at] == group) if len(nodes) else np.zeros(n, bool)
    root = np.where(in_near, roots[at] if len(nodes) else group, group)
    clustered = in_near | np.isin(group, shared)
    picked = np.flatnonzero(clustered)
    rows = [[int(root[i]), int(i + offs[job.index]), int(lengths[i]), int(group[i]), ids[i]] for i in picked]
    _spread_json(plan, "members", job.index, rows, [int(root[i]) % plan.member_parts for i in picked])


# --- 7. keepers --------------------------------------------------------------------------------------


def keepers_step(p: Params, plan: Plan, offsets: list[int], part: int) -> Counter[int]:
    """Each cluster's keeper and duplicates: [index, keeper, kind, estimate, id, keeper id] per shard of the
    duplicate; returns records per cluster -> clusters of that size."""
    clusters: dict[int, list[list[Any]]] = {}
    for row in _load_json(Path(plan.work) / "members", f"p{part:05d}-s*.json"):
        clusters.setdefault(row[0], []).append(row)
    sizes: Counter[int] = Counter()
    out: list[list[Any]] = []
    near: list[tuple[int, int, int]] = []  # (row of out, group, keeper's group)
    for members in clusters.values():
        sizes[len(members)] += 1
        keeper = min(members, key=lambda m: (-m[2], id_order(m[4]), m[1]))
        for m in members:
            if m is keeper:
                continue
            kind = "exact" if m[3] == keeper[3] else "near"
            if kind == "near":
                near.append((len(out), m[3], keeper[3]))
            out.append([m[1], keeper[1], kind, 1.0, m[4], keeper[4]])
    if near:
        sigs = Signatures(plan, offsets)
        a = sigs.rows(np.array([g for _, g, _ in near], dtype=np.int64))
        b = sigs.rows(np.array([k for _, _, k in near], dtype=np.int64))
        for (at, _, _), same in zip(near, np.count_nonzero(a == b, axis=1), strict=True):
            out[at][3] = float(same) / p.num_perm
    offs = np.asarray(offsets, dtype=np.int64)
    shard_of = (np.searchsorted(offs, [r[0] for r in out], side="right") - 1).tolist() if out else []
    _spread_json(plan, "dups", part, out, shard_of)
    return sizes


def shard_duplicates(plan: Plan, shard: int) -> list[list[Any]]:
    """The duplicate rows of one input shard, in input order."""
    return sorted(_load_json(Path(plan.work) / "dups", f"p{shard:05d}-s*.json"), key=lambda r: r[0])


# --- the whole detection -----------------------------------------------------------------------------


def detect(
    p: Params,
    jobs: list[ShardJob],
    work: Path,
    run: ShardMap,
    docs_estimate: int,
    max_memory_mb: int,
    on_signed: Callable[[list[ShardSigned]], None] | None = None,
) -> tuple[Plan, list[int], DiskResult]:
    """Steps 1-7 over `jobs` with `run` (any ShardMap); the duplicates are then in the work folder, per
    shard (`shard_duplicates`). Returns the plan, the shard offsets and the summary."""
    started = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    plan = make_plan(work, len(jobs), docs_estimate, p, max_memory_mb)
    signed = run(partial(sign_step, p, plan), jobs)
    if on_signed is not None:
        on_signed(signed)
    offsets = np.concatenate(([0], np.cumsum([s.records for s in signed]))).astype(np.int64).tolist()
    total = offsets[-1]
    stats: dict[str, float] = {"seconds_signatures": sum(s.seconds for s in signed)}
    exact_groups = sum(run(partial(exact_step, plan), list(range(plan.exact_parts))))
    t = time.perf_counter()
    bands = rows = 0
    if p.near and exact_groups:
        run(partial(bands_step, plan, offsets), jobs)
        found = run(partial(buckets_step, p, plan, offsets), list(range(plan.band_parts)))
        nodes, roots = components(plan)
        # successful unions; core.near_clusters counts none without verification
        accepted = len(nodes) - len(np.unique(roots)) if p.verify else 0
        stats.update(
            candidate_buckets=sum(f.buckets for f in found),
            pairs_checked=sum(f.checked for f in found),
            pairs_accepted=accepted,
        )
        stats["seconds_lsh"] = time.perf_counter() - t
        bands, rows = plan.bands, plan.rows
    else:
        nodes = roots = np.empty(0, np.int64)
    _save(Path(plan.work) / "components.npy", nodes)
    _save(Path(plan.work) / "roots.npy", roots)
    run(partial(members_step, plan, offsets), jobs)
    sizes: Counter[int] = Counter()
    for part_sizes in run(partial(keepers_step, p, plan, offsets), list(range(plan.member_parts))):
        sizes.update(part_sizes)
    exact = near = 0
    for s in range(len(jobs)):
        for row in _load_json(Path(plan.work) / "dups", f"p{s:05d}-s*.json"):
            exact += row[2] == "exact"
            near += row[2] == "near"
    stats["seconds_total"] = stats["seconds_signatures"] + time.perf_counter() - started
    stats["exact_groups"] = exact_groups
    result = DiskResult(
        total=total,
        kept=total - exact - near,
        exact=exact,
        near=near,
        cluster_sizes=dict(sorted(sizes.items())),
        bands=bands,
        rows=rows,
        stats=stats,
    )
    return plan, offsets, result
