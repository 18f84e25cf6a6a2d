"""Progress of long stages: terminal bar switch, sinks (Prefect progress artifacts), rates to MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf.filter import FilterConfig
from tasks import filter as filter_
from tasks.common import progress as progress_mod
from tasks.common.data import Document
from tasks.common.progress import Progress, ProgressEvent, progress_sink, terminal_bars
from tasks.common.tracking import MetricLogger
from tests.helpers import documents_stage


class Metrics(MetricLogger):
    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((dict(metrics), step))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bars_are_off_under_pytest_and_can_be_forced(monkeypatch):
    assert not terminal_bars()  # PYTEST_CURRENT_TEST is set
    monkeypatch.setenv("LMFORGE_PROGRESS", "1")
    assert terminal_bars()
    monkeypatch.setenv("LMFORGE_PROGRESS", "0")
    assert not terminal_bars()


def test_a_forced_bar_draws_rate_and_documents(monkeypatch, capsys):
    monkeypatch.setenv("LMFORGE_PROGRESS", "1")
    with Progress("filter", total=2_000_000) as bar:
        bar.update(1_000_000, docs=400)
        bar.update(1_000_000, docs=400)
    err = capsys.readouterr().err
    assert "filter" in err and "2.00M/2.00M" in err and "800 docs" in err


def test_sinks_hear_throttled_events_and_rates_reach_the_metrics(monkeypatch):
    events: list[ProgressEvent] = []
    clock, metrics = Clock(), Metrics()
    monkeypatch.setattr(progress_mod, "SINK_INTERVAL_S", 2.0)
    with progress_sink(events.append):
        bar = Progress("dedup", "dedup-sign", total=10_000_000, log=metrics, clock=clock)
        clock.now = 1.0
        bar.update(2_000_000, docs=1000)  # within the interval: no event
        clock.now = 2.5
        bar.update(3_000_000, docs=1000)
        clock.now = 5.0
        rates = bar.close()
    assert [e.fraction for e in events] == [0.0, 0.5, 0.5]
    assert events[-1].finished and events[-1].docs == 2000 and "dedup-sign" in events[-1].description
    assert rates == {"mb_per_second": 1.0, "docs_per_second": 400.0}
    assert metrics.logged[-1] == ({"sign/mb_per_second": 1.0, "sign/docs_per_second": 400.0}, 5_000_000)


def test_a_failing_sink_never_fails_the_stage():
    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("server gone")

    with progress_sink(broken):
        Progress("scrub", total=10).close()


def test_the_filter_stage_reports_its_shards(tmp_path):
    docs = [Document(f"d{i}", f"plain words number {i} " * 30, "t") for i in range(40)]
    upstream = documents_stage(tmp_path, docs, stage="collect", shard_docs=10)
    out = tmp_path / "filter"
    out.mkdir()
    events: list[ProgressEvent] = []
    metrics = Metrics()
    with progress_sink(events.append):
        filter_.filter_documents(FilterConfig(workers=1), {"collect": upstream}, out, metrics)
    assert events[0].fraction == 0.0 and events[-1].finished and events[-1].fraction == pytest.approx(1.0)
    shards = sorted((Path(upstream.path) / "documents").glob("shard-*.jsonl"))
    assert len(shards) == 4 and events[-1].docs == 40
    assert events[-1].total == events[-1].done == sum(p.stat().st_size for p in shards)
    assert {"mb_per_second", "docs_per_second"} <= set(metrics.logged[-1][0])


def test_prefect_progress_artifacts(prefect_harness):
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.progress import artifact_key, prefect_progress

    @task
    def long_step() -> None:
        with progress_sink(prefect_progress()):
            with Progress("filter", total=100) as bar:
                bar.update(100, docs=3)

    @flow
    def one() -> None:
        long_step()

    run_id = one(return_state=True).state_details.flow_run_id  # other tests' runs share the server
    key = artifact_key("filter")
    assert key == "progress-filter" and artifact_key("Dedup_Sign") == "progress-dedup-sign"
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
            )
        )
    assert found and found[0].type == "progress" and float(found[0].data) == 100.0
    assert "3 docs" in (found[0].description or "")
