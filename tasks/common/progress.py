"""Progress of a long data stage: a terminal bar, per-shard progress for the orchestrator, rates for MLflow.

One piece for every stage that reads a whole corpus (filter, dedup, scrub, tokenizer):

    with Progress("filter", total=shard_bytes(jobs), log=log_) as bar:
        for part in map_with_progress(map_shards, fn, jobs, bar, docs_of=lambda p: p.total):
            ...

- terminal: a tqdm bar on stderr (MB or tokens, documents, rate, ETA), shown only when stderr is a
  terminal and the process is not under CI or pytest; `LMFORGE_PROGRESS=1` forces it on, `=0` off;
- sinks: whoever runs the stage may register a callback for the duration of a call (`progress_sink`);
  it receives a `ProgressEvent` at most every `SINK_INTERVAL_S` and once at the end. The Prefect runner
  registers one that keeps a progress artifact per stage step (`flows/progress.py`), so `tasks/` never
  imports Prefect;
- MLflow: the rate (`<step>/mb_per_second`, `<step>/docs_per_second`, or `tokens_per_second`) is logged
  through the stage's `MetricLogger` every `METRIC_INTERVAL_S` (step = units done) and at the end.

Progress never changes what a stage writes: bars and metrics are side outputs, not stage files.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tasks.common.tracking import MetricLogger

T = TypeVar("T")
R = TypeVar("R")

SINK_INTERVAL_S = 2.0
METRIC_INTERVAL_S = 15.0
UNIT_NAMES = {"B": "mb", "tok": "tokens", "docs": "docs"}


@dataclass(frozen=True)
class ProgressEvent:
    """What a sink hears: which stage step, how far (0..1, None without a total), and a one-line summary."""

    stage: str
    step: str
    fraction: float | None
    done: int
    total: int | None
    docs: int
    description: str
    finished: bool = False


Sink = Callable[[ProgressEvent], None]
_SINKS: ContextVar[tuple[Sink, ...]] = ContextVar("lmforge_progress_sinks", default=())


@contextlib.contextmanager
def progress_sink(sink: Sink) -> Iterator[None]:
    """Send every `Progress` made in this context (this thread / task) to `sink` as well."""
    token = _SINKS.set((*_SINKS.get(), sink))
    try:
        yield
    finally:
        _SINKS.reset(token)


def terminal_bars() -> bool:
    """Whether to draw a bar: `LMFORGE_PROGRESS` if set, else only on a terminal outside CI and pytest."""
    forced = os.environ.get("LMFORGE_PROGRESS")
    if forced is not None:
        return forced.strip().lower() not in ("0", "false", "no", "off", "")
    if os.environ.get("CI") or os.environ.get("PYTEST_CURRENT_TEST"):
        return False
    return sys.stderr.isatty()


class _Bar(Protocol):
    def update(self, n: float) -> Any: ...

    def set_postfix_str(self, s: str, refresh: bool = ...) -> Any: ...

    def close(self) -> Any: ...


class Progress:
    """Counts units (`B` bytes, `tok` tokens, or `docs`) and documents done in one stage step."""

    def __init__(
        self,
        stage: str,
        step: str | None = None,
        *,
        total: int | None = None,
        unit: str = "B",
        log: MetricLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage, self.step = stage, step or stage
        self.total, self.unit, self.log = total, unit, log
        self.done = self.docs = 0
        self._clock = clock
        self.started = self._last_sink = self._last_metric = clock()
        self._sinks = _SINKS.get()
        self._bar: _Bar | None = None
        if terminal_bars():
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=self.step,
                unit=unit,
                unit_scale=True,
                unit_divisor=1000,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        self._emit(force=True)

    def update(self, n: int, docs: int = 0) -> None:
        """`n` more units (and `docs` more documents) done."""
        self.done += n
        self.docs += docs
        if self._bar is not None:
            self._bar.update(n)
            if docs:
                per_second = self.rates().get("docs_per_second", 0)
                self._bar.set_postfix_str(f"{self.docs:,} docs, {per_second:,.0f} docs/s")
        self._emit()

    def rates(self) -> dict[str, float]:
        """Units and documents per second so far (`mb_per_second` for bytes)."""
        seconds = max(self._clock() - self.started, 1e-9)
        name = UNIT_NAMES.get(self.unit, self.unit)
        rates = {f"{name}_per_second": self.done / seconds / (1e6 if self.unit == "B" else 1)}
        if self.docs and self.unit != "docs":
            rates["docs_per_second"] = self.docs / seconds
        return rates

    def _description(self) -> str:
        rates = ", ".join(f"{v:,.1f} {k.replace('_per_second', '/s')}" for k, v in self.rates().items())
        of = f" of {self.total:,}" if self.total else ""
        return f"{self.step}: {self.done:,}{of} {self.unit}, {self.docs:,} docs ({rates})"

    def _emit(self, force: bool = False, finished: bool = False) -> None:
        now = self._clock()
        if self._sinks and (force or now - self._last_sink >= SINK_INTERVAL_S):
            self._last_sink = now
            fraction = min(1.0, self.done / self.total) if self.total else None
            summary = self._description()
            event = ProgressEvent(
                self.stage, self.step, fraction, self.done, self.total, self.docs, summary, finished
            )
            for sink in self._sinks:
                with contextlib.suppress(Exception):  # progress must never fail a stage
                    sink(event)
        if self.log is not None and self.done and (finished or now - self._last_metric >= METRIC_INTERVAL_S):
            self._last_metric = now
            prefix = "" if self.step == self.stage else f"{self.step.removeprefix(self.stage + '-')}/"
            rates = {f"{prefix}{k}": round(v, 3) for k, v in self.rates().items()}
            self.log.log_metrics(rates, step=self.done)

    def close(self) -> dict[str, float]:
        """End the bar, tell the sinks and log the final rates; returns them."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._emit(force=True, finished=True)
        return self.rates()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_bytes(paths: list[str] | list[Path]) -> list[int]:
    """Sizes of the input files (what a byte-counting bar runs over)."""
    return [os.path.getsize(p) for p in paths]


def map_with_progress(
    map_shards: Callable[[Callable[[T], R], list[T]], list[R]],
    fn: Callable[[T], R],
    jobs: list[T],
    progress: Progress,
    sizes: list[int],
    docs_of: Callable[[R], int] = lambda _: 0,
) -> list[R]:
    """`map_shards(fn, jobs)`, advancing `progress` by each job's size as its result arrives.

    A map with `imap` (the local pool) streams results in job order; any other map (the Dask engine,
    whose task runs already show per-shard progress in Prefect) reports when it returns."""
    imap = getattr(map_shards, "imap", None)
    results: list[R] = []
    stream = imap(fn, jobs) if imap is not None else iter(map_shards(fn, jobs))
    for result, size in zip(stream, sizes, strict=True):
        results.append(result)
        progress.update(size, docs_of(result))
    return results
