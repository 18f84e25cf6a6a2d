"""Exact + near-duplicate detection shared by the `dedup` stage and the `lmforge dedup` command.

`sign` reads `(id, text)` records (a shard, or a whole input) and `cluster` decides over the signed runs:
1. exact: records whose normalized text hashes alike form one group (signed once);
2. near: each group gets a datasketch MinHash of its word n-gram shingles (xxhash hash function,
   computed a batch of documents at a time in worker processes, batches in input order, so the
   signatures do not depend on the worker count), indexed in a `MinHashLSH` (as `LeanMinHash`);
   groups sharing an LSH bucket are candidate pairs, kept when their estimated Jaccard reaches the
   threshold (`verify`), and merged with union-find into clusters;
3. every cluster keeps one record: the longest text, then the lowest id. The others are duplicates of it.
Components of the verified-pair graph do not depend on the order pairs are seen in, so the result is
the same for any worker count and any LSH storage.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from conf.dedup import DedupConfig, LshStorage, RedisStorage
from tasks.common.pool import ordered_map

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """NFKC, lowercase, whitespace collapsed: what 'the same text' means for exact dedup."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def text_key(text: str, normalized: bool = True) -> str:
    return hashlib.sha1((normalize(text) if normalized else text).encode("utf-8")).hexdigest()


def shingles(normalized: str, ngram: int) -> list[bytes]:
    """Word n-grams of an already normalized text (repeats included); a text shorter than `ngram` words is
    one shingle, a text without words has none."""
    words = _WORD.findall(normalized)
    if len(words) <= ngram:
        return [" ".join(words).encode()] if words else []
    return list(map(str.encode, map(" ".join, zip(*[words[i:] for i in range(ngram)], strict=False))))


def true_jaccard(a: str, b: str, ngram: int) -> float:
    """Exact Jaccard similarity of two raw texts' shingle sets (what the MinHash estimate approximates)."""
    sa, sb = set(shingles(normalize(a), ngram)), set(shingles(normalize(b), ngram))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


# what a signature worker needs, imported once in the forkserver rather than in every worker
PRELOAD = ("tasks.dedup.core", "datasketch", "xxhash")
_ROWS = 1024  # shingles per vectorized step: x num_perm uint32 values stay in the CPU cache
_EMPTY = np.uint32(0xFFFFFFFF)  # an unset affine32 hash value


def signature_batch(texts: list[str], ngram: int, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MinHash hash values (uint32, one row per normalized text) and shingle counts (0: no words) of a batch.

    Exactly what datasketch's `MinHash(num_perm, seed, hashfunc=xxh32).update_batch(shingles)` gives
    (affine32 scheme: fmix32 pre-mix, then `a * h + b` mod 2^32; tests check it), computed for many
    documents per numpy step with `minimum.reduceat`, which for short texts is ~5x faster than one
    MinHash (`MinHash.bulk`) per text. Runs in worker processes.
    """
    import xxhash
    from datasketch import MinHash
    from datasketch.minhash import _fmix

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    sets = [shingles(t, ngram) for t in texts]
    counts = np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))
    hashes = (xxhash.xxh32_intdigest(s) for shingle_list in sets for s in shingle_list)
    hv = _fmix(np.fromiter(hashes, dtype=np.uint32, count=int(counts.sum())), 32)[:, None]
    sigs = np.full((len(texts), num_perm), _EMPTY, dtype=np.uint32)
    ends = np.cumsum(counts)
    starts = ends - counts
    i = 0
    while i < len(texts):  # documents i..j-1 hold at most _ROWS shingles (or one long document does)
        j = i + 1
        while j < len(texts) and ends[j] - starts[i] <= _ROWS:
            j += 1
        lo, hi = starts[i], ends[j - 1]
        if counts[i] > _ROWS:
            for s in range(lo, hi, _ROWS):
                sigs[i] = np.minimum(sigs[i], (hv[s : min(s + _ROWS, hi)] * a + b).min(axis=0))
        else:
            docs = np.arange(i, j)[counts[i:j] > 0]  # reduceat needs non-empty segments
            if len(docs):
                phv = hv[lo:hi] * a
                phv += b
                sigs[docs] = np.minimum.reduceat(phv, starts[docs] - lo, axis=0)
        i = j
    return sigs, counts


def config_default(name: str) -> Any:
    """`DedupConfig`'s default for a field: the one place dedup's defaults are stated."""
    return DedupConfig.model_fields[name].get_default(call_default_factory=True)


@dataclass(frozen=True)
class Params:
    """What detection needs from `DedupConfig`, as plain picklable data, with the LSH storage resolved.

    The defaults are `DedupConfig`'s, so `Params()` detects as a default stage config does."""

    ngram: int = config_default("ngram")
    num_perm: int = config_default("num_perm")
    threshold: float = config_default("threshold")
    seed: int = config_default("seed")
    # the exact key hashes normalized (True) or raw text; shingles always use normalized text
    normalize: bool = config_default("normalize")
    near: bool = config_default("near")
    verify: bool = config_default("verify")
    # datasketch's weights=(1 - it, it) for choosing bands x rows
    false_negative_weight: float = config_default("false_negative_weight")
    workers: int = config_default("workers")
    batch_size: int = config_default("batch_size")
    storage_config: dict[str, Any] = field(
        default_factory=lambda: lsh_storage_config(config_default("lsh_storage"))
    )

    @classmethod
    def from_config(cls, cfg: DedupConfig) -> Params:
        return cls(
            ngram=cfg.ngram,
            num_perm=cfg.num_perm,
            threshold=cfg.threshold,
            seed=cfg.seed,
            normalize=cfg.normalize,
            near=cfg.near,
            verify=cfg.verify,
            false_negative_weight=cfg.false_negative_weight,
            workers=cfg.workers,
            batch_size=cfg.batch_size,
            storage_config=lsh_storage_config(cfg.lsh_storage),
        )


def redis_password(storage: LshStorage) -> str | None:
    """The Redis password, read when the stage runs from the environment variable the config names: conf
    never reads the environment, and the password never enters the config that MLflow logs."""
    return (os.environ.get(storage.password_env) or None) if isinstance(storage, RedisStorage) else None


def lsh_storage_config(storage: LshStorage) -> dict[str, Any]:
    """datasketch's `storage_config` for where the LSH index lives, with the Redis password if one is set."""
    if isinstance(storage, RedisStorage):
        return storage.storage_config(redis_password(storage))
    return storage.storage_config()


@dataclass
class Duplicate:
    index: int  # position of the removed record in the input
    keeper: int  # position of the record kept in its place
    kind: str  # "exact" (same normalized text as the keeper) or "near"
    jaccard_estimate: float


@dataclass
class Result:
    ids: list[Any]
    lengths: list[int]
    keep: np.ndarray  # bool per input record
    duplicates: list[Duplicate]  # in input order
    cluster_sizes: dict[int, int]  # records per cluster -> clusters of that size (clusters of 2+)
    bands: int = 0
    rows: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.ids)

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    def count(self, kind: str) -> int:
        return sum(1 for d in self.duplicates if d.kind == kind)


def id_order(value: Any) -> tuple:
    """Sort key for 'the lowest id': numbers numerically, before strings, strings lexicographically."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _bucket_groups(lsh: Any) -> Iterator[list[int]]:
    """Members of every LSH bucket holding 2+ keys, through the storage API (dict, Redis, ...)."""
    import pickle

    for table in lsh.hashtables:
        crowded = [h for h, n in table.itemcounts().items() if n > 1]
        for start in range(0, len(crowded), 10_000):
            for members in table.getmany(*crowded[start : start + 10_000]):
                keys = [pickle.loads(k) for k in members] if lsh.prepickle else list(members)
                yield sorted(keys)


def near_clusters(
    sigs: np.ndarray, signed: np.ndarray, p: Params, stats: dict[str, float]
) -> tuple[UnionFind, int, int]:
    """Union-find over exact groups merged by LSH candidate pairs (verified by estimated Jaccard)."""
    from datasketch import LeanMinHash, MinHashLSH

    uf = UnionFind(len(sigs))
    storage = dict(p.storage_config)
    if storage.get("type") == "redis" and "basename" not in storage:
        storage["basename"] = f"lmforge-dedup-{time.time_ns()}".encode()
    weights = (1 - p.false_negative_weight, p.false_negative_weight)
    lsh = MinHashLSH(threshold=p.threshold, num_perm=p.num_perm, weights=weights, storage_config=storage)
    try:
        with lsh.insertion_session() as session:
            for g in np.flatnonzero(signed):
                mh = LeanMinHash(seed=p.seed, hashvalues=sigs[g], scheme="affine32")
                session.insert(int(g), mh, check_duplication=False)
        checked = accepted = buckets = 0  # candidate pairs compared; of them, pairs that joined two clusters
        for members in _bucket_groups(lsh):
            buckets += 1
            if not p.verify:
                for b in members[1:]:
                    uf.union(members[0], b)
                continue
            pending = np.array(members)
            while len(pending) > 1:  # every pair of the bucket, each member against all later ones at once
                a, rest = pending[0], pending[1:]
                sims = np.count_nonzero(sigs[rest] == sigs[a], axis=1) / p.num_perm
                checked += len(rest)
                for b in rest[sims >= p.threshold]:
                    if uf.find(a) != uf.find(b):
                        accepted += 1
                        uf.union(a, b)
                # a member with a's very signature would only repeat a's comparisons: drop it
                pending = rest[sims < 1.0]
        stats.update(candidate_buckets=buckets, pairs_checked=checked, pairs_accepted=accepted)
        return uf, lsh.b, lsh.r
    finally:
        if storage.get("type") == "redis" and "basename" not in p.storage_config:
            _drop_redis_keys(storage)


def _drop_redis_keys(storage: dict[str, Any]) -> None:
    import redis

    client = redis.Redis(**storage["redis"])
    keys = list(client.scan_iter(match=storage["basename"] + b"*", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.delete(*keys[start : start + 10_000])


@dataclass
class Signed:
    """Exact keys and MinHash signatures of a run of records: one shard, or a whole input.

    Only the first record of each exact key (within this run) is signed: `first[r]` is the record whose
    normalized text gave `sigs[r]`. Runs signed apart and clustered together (`cluster`) give the same
    result as one run over all records, since a signature depends only on the text.
    """

    ids: list[Any]
    lengths: list[int]
    keys: list[bytes]  # sha1 of the (normalized) text, per record
    first: list[int]
    sigs: np.ndarray  # uint32, one row per `first` entry
    counts: np.ndarray  # shingles per `first` entry (0: no words)
    seconds: float = 0.0


def sign(records: Iterable[tuple[Any, str]], p: Params) -> Signed:
    """Exact keys of every `(id, text)` record and signatures of each new key, batches in `p.workers`
    processes."""
    started = time.perf_counter()
    ids: list[Any] = []
    lengths: list[int] = []
    keys: list[bytes] = []
    first: list[int] = []
    seen: set[bytes] = set()

    def batches() -> Iterator[list[str]]:
        """Normalized text of each new key, batch by batch (records are read as batches are taken)."""
        batch: list[str] = []
        for rid, text in records:
            norm = normalize(text)
            key = hashlib.sha1((norm if p.normalize else text).encode("utf-8")).digest()
            if key not in seen:
                seen.add(key)
                first.append(len(ids))
                batch.append(norm)
            ids.append(rid)
            lengths.append(len(text))
            keys.append(key)
            if len(batch) >= p.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    if p.near:
        fn = partial(signature_batch, ngram=p.ngram, num_perm=p.num_perm, seed=p.seed)
        parts = list(ordered_map(fn, batches(), p.workers, preload=PRELOAD))
    else:
        parts = [(np.empty((0, p.num_perm), np.uint32), np.zeros(0, np.int64)) for _ in batches()]
    sigs = np.concatenate([s for s, _ in parts]) if parts else np.empty((0, p.num_perm), np.uint32)
    counts = np.concatenate([n for _, n in parts]) if parts else np.zeros(0, np.int64)
    return Signed(ids, lengths, keys, first, sigs, counts, time.perf_counter() - started)


def find_duplicates(records: Iterable[tuple[Any, str]], p: Params) -> Result:
    """Decide, for each `(id, text)` record in order, whether it is kept or a duplicate of which kept
    record."""
    return cluster([sign(records, p)], p)


def cluster(parts: list[Signed], p: Params) -> Result:
    """Exact groups, then near-duplicate clusters over the signed runs, in order: one decision per record."""
    started = time.perf_counter()
    stats: dict[str, float] = {"seconds_signatures": sum(part.seconds for part in parts)}
    ids: list[Any] = []
    lengths: list[int] = []
    group_of: list[int] = []
    groups: dict[bytes, int] = {}
    sig_rows: list[np.ndarray] = []  # per part: its rows that sign a group new to the whole input
    for part in parts:
        row_of = {rec: r for r, rec in enumerate(part.first)}
        rows: list[int] = []
        for j, key in enumerate(part.keys):
            g = groups.get(key)
            if g is None:
                g = groups[key] = len(groups)
                rows.append(row_of[j])  # new to the input means new to this part: the part signed it
            group_of.append(g)
        sig_rows.append(np.asarray(rows, dtype=np.int64))
        ids.extend(part.ids)
        lengths.extend(part.lengths)
    n_groups = len(groups)
    if parts and p.near:
        sigs = np.concatenate([part.sigs[rows] for part, rows in zip(parts, sig_rows, strict=True)])
        signed = np.concatenate([part.counts[rows] for part, rows in zip(parts, sig_rows, strict=True)]) > 0
    else:
        sigs, signed = np.empty((0, p.num_perm), np.uint32), np.zeros(0, bool)

    bands = rows_per_band = 0
    if p.near and n_groups:
        t = time.perf_counter()
        uf, bands, rows_per_band = near_clusters(sigs, signed, p, stats)
        stats["seconds_lsh"] = time.perf_counter() - t
        root_of_group = [uf.find(g) for g in range(n_groups)]
    else:
        root_of_group = list(range(n_groups))

    # keeper of each cluster: longest text, then lowest id (over every record of the cluster)
    keeper: dict[int, int] = {}
    for i, g in enumerate(group_of):
        r = root_of_group[g]
        k = keeper.get(r)
        if k is None or (-lengths[i], id_order(ids[i])) < (-lengths[k], id_order(ids[k])):
            keeper[r] = i
    keep = np.zeros(len(ids), dtype=bool)
    keep[list(keeper.values())] = True
    duplicates: list[Duplicate] = []
    size: Counter[int] = Counter(root_of_group[g] for g in group_of)
    for i, g in enumerate(group_of):
        k = keeper[root_of_group[g]]
        if i == k:
            continue
        gk = group_of[k]
        if g == gk:
            duplicates.append(Duplicate(i, k, "exact", 1.0))
        else:
            est = float(np.count_nonzero(sigs[g] == sigs[gk])) / p.num_perm
            duplicates.append(Duplicate(i, k, "near", est))
    stats["seconds_total"] = stats["seconds_signatures"] + time.perf_counter() - started
    stats["exact_groups"] = n_groups
    return Result(
        ids=ids,
        lengths=lengths,
        keep=keep,
        duplicates=duplicates,
        cluster_sizes=dict(sorted(Counter(n for n in size.values() if n > 1).items())),
        bands=bands,
        rows=rows_per_band,
        stats=stats,
    )
