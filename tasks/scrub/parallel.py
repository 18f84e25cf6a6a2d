"""Find PII in batches of texts, in order, in-process or in worker processes (same results either way).

Workers only return spans (small); the caller applies them with `detect.redact`, so each text crosses
the process boundary once. The pool is `tasks.common.pool.OrderedPool`; each worker builds its
`Scrubber` once, when it starts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

from conf.scrub import ScrubConfig
from tasks.common.pool import OrderedPool
from tasks.scrub.detect import Scrubber, Span

# what a worker needs, imported once in the forkserver rather than in every worker
PRELOAD = ("tasks.scrub.parallel", "phonenumbers")
IN_FLIGHT_PER_WORKER = 3  # batches queued per worker: enough to keep it busy, few enough to bound memory

_SCRUBBER: Scrubber | None = None


def _init(cfg_data: dict[str, Any]) -> None:
    global _SCRUBBER
    _SCRUBBER = Scrubber.from_config(ScrubConfig.model_validate(cfg_data))


def _find_batch(texts: list[str]) -> list[list[Span]]:
    """The worker side: spans of each text, by the scrubber `_init` built in this process."""
    assert _SCRUBBER is not None
    return _find_all(_SCRUBBER, texts)


def _find_all(scrubber: Scrubber, texts: list[str]) -> list[list[Span]]:
    return [scrubber.find(t) for t in texts]


def worker_pool(cfg: ScrubConfig) -> OrderedPool:
    """A pool of `cfg.workers` processes (none for 1: work in-process), reusable across passes."""
    return OrderedPool(
        cfg.workers,
        window=IN_FLIGHT_PER_WORKER * cfg.workers,
        initializer=_init,
        initargs=(cfg.model_dump(),),
        preload=PRELOAD,
    )


def find_batches(
    batches: Iterable[tuple[Any, list[str]]], cfg: ScrubConfig, pool: OrderedPool | None = None
) -> Iterator[tuple[Any, list[list[Span]]]]:
    """For each `(payload, texts)`, yield `(payload, spans of each text)` in input order.

    Without a pool, one is made for this pass. Payloads stay in this process, queued beside the
    batches in flight.
    """
    if pool is None:
        with worker_pool(cfg) as own:
            yield from find_batches(batches, cfg, own)
        return
    find = partial(_find_all, Scrubber.from_config(cfg)) if pool.in_process else _find_batch
    payloads: deque[Any] = deque()

    def texts() -> Iterator[list[str]]:
        for payload, batch in batches:
            payloads.append(payload)
            yield batch

    for spans in pool.map(find, texts()):
        yield payloads.popleft(), spans


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
