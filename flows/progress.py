"""Stage progress in Prefect: one progress artifact per stage step, updated as the step advances.

`tasks/common/progress.py` reports to whatever sinks the caller registered (tasks/ imports no Prefect);
the stage task (`flows/runner.py`) registers `prefect_progress` around each stage, so the Prefect UI shows
each long step of a running stage (`filter`, `dedup-sign`, `dedup-write`, `scrub`, ...) as a progress
bar on the stage's task run, with its rate in the description. Under the Dask engine every shard is also a
task run of its own (`flows/engine.py`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from uuid import UUID

from tasks.common.progress import ProgressEvent

log = logging.getLogger(__name__)


def artifact_key(step: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"progress-{step}".lower()).strip("-")


def prefect_progress() -> Callable[[ProgressEvent], None]:
    """A sink keeping one Prefect progress artifact per step (created on the step's first event)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifacts: dict[str, UUID] = {}

    def sink(event: ProgressEvent) -> None:
        percent = 100.0 * (event.fraction if event.fraction is not None else (1.0 if event.finished else 0.0))
        artifact = artifacts.get(event.step)
        if artifact is None:
            created = create_progress_artifact(
                progress=percent, key=artifact_key(event.step), description=event.description
            )
            if isinstance(created, UUID):  # a coroutine only when called from async code, never here
                artifacts[event.step] = created
        else:
            update_progress_artifact(artifact, progress=percent, description=event.description)

    return sink
