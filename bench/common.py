"""Shared bench plumbing: median-of-N timing, peak RSS, side-by-side rows, markdown/JSON/MLflow output.

A bench measures our implementation and its baseline in the same process (or the same invocation),
alternating runs, so machine noise cancels in the ratio.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class Measurement:
    """Median seconds over `runs`, the throughput it implies, and the peak RSS seen while running."""

    name: str
    seconds: list[float]
    units: float  # work done per run (documents, bytes, tokens, episodes)
    unit: str
    peak_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.units / self.median_s if self.median_s > 0 else float("inf")


class PeakRss:
    """Samples this process's (and its children's) RSS in a thread; `peak_mb` after exit."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                rss = proc.memory_info().rss
            self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def measure_pair(
    ours: Callable[[], Any],
    baseline: Callable[[], Any],
    units: float,
    unit: str,
    runs: int = 3,
    names: tuple[str, str] = ("lmforge", "baseline"),
) -> tuple[Measurement, Measurement, list[Any]]:
    """Alternate ours/baseline `runs` times; return both measurements and the last outputs."""
    times: dict[str, list[float]] = {names[0]: [], names[1]: []}
    peaks: dict[str, float] = {names[0]: 0.0, names[1]: 0.0}
    outputs: list[Any] = [None, None]
    for _ in range(runs):
        for i, (name, fn) in enumerate(zip(names, (ours, baseline), strict=True)):
            with PeakRss() as rss:
                t0 = time.perf_counter()
                outputs[i] = fn()
                times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], rss.peak_mb)
    a = Measurement(names[0], times[names[0]], units, unit, peaks[names[0]])
    b = Measurement(names[1], times[names[1]], units, unit, peaks[names[1]])
    return a, b, outputs


def row(bench: str, ours: Measurement, base: Measurement, **extra: Any) -> dict[str, Any]:
    return {
        "bench": bench,
        "unit": f"{ours.unit}/s",
        "ours": round(ours.rate, 2),
        "baseline": round(base.rate, 2),
        "speedup": round(ours.rate / base.rate, 2) if base.rate else None,
        "ours_median_s": round(ours.median_s, 4),
        "baseline_median_s": round(base.median_s, 4),
        "ours_peak_rss_mb": round(ours.peak_rss_mb, 1),
        "baseline_peak_rss_mb": round(base.peak_rss_mb, 1),
        "runs": len(ours.seconds),
        **extra,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import platform

    import torch

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "max_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def save(name: str, rows: list[dict[str, Any]], details: dict[str, Any] | None = None) -> Path:
    """Write `bench/results/<name>.json` and `.md`, and print the table."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "bench": name,
        "machine": machine(),
        "rows": rows,
        "details": details or {},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    table = markdown_table(rows)
    (RESULTS_DIR / f"{name}.md").write_text(f"## {name}\n\n{table}\n")
    print(f"\n## {name}\n\n{table}\n")
    return path


def log_to_mlflow(results: list[Path]) -> str | None:
    """One MLflow run named `bench` holding every bench's rows as metrics and its files as artifacts."""
    from flows.environment import artifacts_root, tracking_uri
    from tasks.common.tracking import Tracker

    tracker = Tracker.for_pipeline(artifacts_root(None), tracking_uri(None), "lmforge-bench")
    run = tracker.client.create_run(tracker.experiment_id, run_name="bench", tags={"lmforge.kind": "bench"})
    for path in results:
        data = json.loads(path.read_text())
        for r in data["rows"]:
            for key in ("ours", "baseline", "speedup", "seconds"):
                if isinstance(r.get(key), int | float):
                    name = re.sub(r"[^\w\-. :/]", "_", f"{r['bench']}/{key}")  # MLflow's allowed characters
                    tracker.client.log_metric(run.info.run_id, name, float(r[key]))
        tracker.client.log_artifact(run.info.run_id, str(path), "bench")
        md = path.with_suffix(".md")
        if md.exists():
            tracker.client.log_artifact(run.info.run_id, str(md), "bench")
    tracker.client.set_terminated(run.info.run_id)
    return run.info.run_id


def as_dict(m: Measurement) -> dict[str, Any]:
    d = asdict(m)
    d.update(median_s=m.median_s, rate=m.rate)
    return d
