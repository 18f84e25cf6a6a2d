"""Per-shard data stages: map one function over the input shards, then combine, in-process or on a cluster.

A sharded stage (filter, dedup, scrub) splits its work into `ShardJob`s, one per upstream document
shard, and hands them to a `ShardMap`: any function with the contract of the builtin `map` that returns
a list in job order. The default runs them here, one after another; the Prefect runner passes one that
runs each job as a Prefect task run on a Dask cluster (`flows/engine.py`). The mapped function must be
picklable (a module-level function, or a `functools.partial` of one) and must write only its own files,
named by the job's index, so the stage folder is the same whichever map ran it.

Output shard `i` holds what input shard `i` became: `documents/shard-{i:05d}.jsonl`, datatrove-style.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tasks.common.artifacts import Manifest
from tasks.common.data import DOCS_DIR, Document, ShardWriter, read_shard, shard_paths
from tasks.common.pool import OrderedPool

T = TypeVar("T")
R = TypeVar("R")


class ShardMap(Protocol):
    """Maps `fn` over `jobs` like the builtin `map`, returning the results as a list in job order."""

    def __call__(self, fn: Callable[[T], R], jobs: list[T], /) -> list[R]: ...


def map_here(fn: Callable[[T], R], jobs: list[T]) -> list[R]:
    """The in-process `ShardMap`: one job after another, in order."""
    return [fn(job) for job in jobs]


class PoolShardMap:
    """The in-process `ShardMap` on local worker processes (the shared pool, `tasks/common/pool.py`): the
    same per-shard jobs the Dask engine runs, one shard per task, results in job order. The processes
    start on the first call with 2+ jobs and serve every later call until `close` (use it as a context
    manager); with one worker, or one job, the jobs run in this process."""

    def __init__(self, workers: int, preload: Sequence[str] = ()) -> None:
        self.workers = workers
        self.preload = tuple(preload)
        self._pool: OrderedPool | None = None

    def __call__(self, fn: Callable[[T], R], jobs: list[T]) -> list[R]:
        return list(self.imap(fn, jobs))

    def imap(self, fn: Callable[[T], R], jobs: list[T]) -> Iterator[R]:
        """The results one by one, in job order, as they come (for progress)."""
        if self.workers <= 1 or len(jobs) <= 1:
            return map(fn, jobs)
        if self._pool is None:
            self._pool = OrderedPool(self.workers, preload=self.preload)
        return self._pool.map(fn, jobs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> PoolShardMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ShardJob:
    """One input shard of a stage: where to read it and which output index it becomes (plain data, so
    it pickles to a cluster worker)."""

    index: int
    path: str

    def documents(self) -> Iterator[Document]:
        return read_shard(Path(self.path))

    def writer(self, out: Path) -> ShardWriter:
        """The writer of this job's output shard, `documents/shard-{index:05d}.jsonl` (created on first
        write)."""
        return ShardWriter(out, shard_docs=2**62, start=self.index)


def shard_jobs(source: Manifest, subdir: str = DOCS_DIR) -> list[ShardJob]:
    """One job per document shard of `source`, in shard order."""
    return [ShardJob(i, str(p)) for i, p in enumerate(shard_paths(source, subdir))]


def first_per_key(samples: Iterable[dict[str, Any]], key: str, limit: int) -> list[dict[str, Any]]:
    """The first `limit` samples of each `sample[key]`, in order: merges per-shard samples as one pass
    would."""
    seen: dict[Any, int] = {}
    kept = []
    for s in samples:
        n = seen.get(s[key], 0)
        if n < limit:
            seen[s[key]] = n + 1
            kept.append(s)
    return kept


def concat_parts(parts: Iterable[Path], dest: Path) -> None:
    """Concatenate per-shard part files into `dest`, in order, and delete the parts."""
    with open(dest, "wb") as out:
        for part in parts:
            if part.exists():
                out.write(part.read_bytes())
                part.unlink()


def part_path(out: Path, name: str, index: int) -> Path:
    """Where shard `index` writes its piece of `name` (merged by the combine step):
    `_parts/{name}.{index:05d}`."""
    folder = out / "_parts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.{index:05d}"


def remove_parts(out: Path) -> None:
    folder = out / "_parts"
    if folder.exists():
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
