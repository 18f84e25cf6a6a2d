"""One bounded, ordered process pool for the data stages' CPU-bound work (dedup signatures, PII spans).

Results come back in input order, so a stage's output never depends on its worker count, and at most
`window` items are in flight, so memory stays bounded however long the input is. With one worker the
work runs in this process: no start-up cost, and nothing to pickle.

Workers are forked from a forkserver, not from the caller: the caller may run threads (Prefect, MLflow)
whose locks a plain fork would copy held. As with spawn, each worker re-imports the main script, so a
script that uses a pool needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class OrderedPool:
    """`workers` processes (none for 1), reusable across passes over several inputs.

    `initializer(*initargs)` runs once in each worker (e.g. to build a detector that is costly to make);
    `preload` names modules the forkserver imports before it forks workers. The forkserver starts once per
    process, so only the first pool's `preload` counts; later workers import what they miss themselves.
    """

    def __init__(
        self,
        workers: int,
        *,
        window: int = 0,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
        preload: Sequence[str] = (),
    ) -> None:
        self.workers = workers
        self.window = window or 2 * workers
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1:
            ctx = mp.get_context("forkserver")
            if preload:
                ctx.set_forkserver_preload(list(preload))
            self._executor = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=initializer, initargs=initargs
            )

    @property
    def in_process(self) -> bool:
        """True when there are no worker processes (one worker): `map` calls `fn` here."""
        return self._executor is None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """`map(fn, items)`, results in input order; `items` is read only as far as the window needs."""
        if self._executor is None:
            yield from map(fn, items)
            return
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(self._executor.submit(fn, item))
            if len(pending) >= self.window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        """Stop the workers; items not started yet (after an error downstream) are dropped, not run."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> OrderedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, window: int = 0, preload: Sequence[str] = ()
) -> Iterator[R]:
    """One pass of `fn` over `items` in a pool of its own (see `OrderedPool`)."""
    with OrderedPool(workers, window=window, preload=preload) as pool:
        yield from pool.map(fn, items)
