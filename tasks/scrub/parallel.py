"""Find PII in batches of texts, in order, in-process or in worker processes (same results either way).

Workers only return spans (small); the caller applies them with `detect.redact`, so each text crosses
the process boundary once.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from conf.scrub import ScrubConfig
from tasks.scrub.detect import Scrubber, Span

_SCRUBBER: Scrubber | None = None


def _init(cfg_data: dict[str, Any]) -> None:
    global _SCRUBBER
    _SCRUBBER = Scrubber.from_config(ScrubConfig.model_validate(cfg_data))


def _find_batch(texts: list[str]) -> list[list[Span]]:
    assert _SCRUBBER is not None
    return [_SCRUBBER.find(t) for t in texts]


@contextlib.contextmanager
def worker_pool(cfg: ScrubConfig) -> Iterator[Any]:
    """A pool of `cfg.workers` spawned processes (None for 1: work in-process), reusable across passes.

    Spawned, not forked (the parent may hold Prefect/MLflow threads and locks), so a script that runs
    the stage with workers > 1 needs the usual `if __name__ == "__main__":` guard.
    """
    if cfg.workers == 1:
        yield None
        return
    with mp.get_context("spawn").Pool(cfg.workers, initializer=_init, initargs=(cfg.model_dump(),)) as pool:
        yield pool


def find_batches(
    batches: Iterable[tuple[Any, list[str]]], cfg: ScrubConfig, pool: Any = None
) -> Iterator[tuple[Any, list[list[Span]]]]:
    """For each `(payload, texts)`, yield `(payload, spans of each text)` in input order.

    With a pool (or `cfg.workers > 1`), batches go to worker processes, at most 3 per worker in
    flight, so memory stays bounded.
    """
    if pool is None and cfg.workers > 1:
        with worker_pool(cfg) as own:
            yield from find_batches(batches, cfg, own)
        return
    if pool is None:
        scrubber = Scrubber.from_config(cfg)
        for payload, texts in batches:
            yield payload, [scrubber.find(t) for t in texts]
        return
    inflight: deque = deque()
    for payload, texts in batches:
        inflight.append((payload, pool.apply_async(_find_batch, (texts,))))
        if len(inflight) >= 3 * cfg.workers:
            payload0, result = inflight.popleft()
            yield payload0, result.get()
    while inflight:
        payload0, result = inflight.popleft()
        yield payload0, result.get()


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
