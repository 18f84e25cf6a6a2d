"""The pipeline run's summary as a Prefect artifact: the flow run's Artifacts tab answers "what did this
run produce?" without opening MLflow.

One markdown artifact per run (key `lmforge-run-summary`, so the Artifacts page keeps its history):
the stage table, the judged headline figures, the quality gates, and links to the MLflow run, the
registered model version and the model card. MLflow links point at `$LMFORGE_MLFLOW_UI` (default: the
`make ui` address) when the tracking store is a file, or at the tracking server itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.runner import PipelineRun

log = logging.getLogger(__name__)
ARTIFACT_KEY = "lmforge-run-summary"
DEFAULT_UI = "http://127.0.0.1:5000"
# headline figures the summary shows first: the independent judges' (evaluate) and the export's gates
JUDGED = ("judge_", "rouge_l", "token_f1", "ppl_", "distinct")


def mlflow_ui(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return os.environ.get("LMFORGE_MLFLOW_UI", DEFAULT_UI).rstrip("/")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


def stage_rows(run: PipelineRun) -> list[tuple[Any, ...]]:
    from flows.stages import STAGES

    rows: list[tuple[Any, ...]] = [
        (name, r.status, round(r.seconds, 1), r.key_figure(STAGES[name].key_figure), r.manifest.path)
        for name, r in run.results.items()
    ]
    rows += [
        (name, "gate failed", round(r.seconds, 1), "", r.manifest.path) for name, r in run.gate_failed.items()
    ]
    if run.failed_stage and run.failed_stage not in run.gate_failed:
        rows.append((run.failed_stage, "failed", "", run.error or "", ""))
    return rows


def gate_rows(run: PipelineRun) -> list[tuple[str, str]]:
    """Every stage that has a quality gate: passed, or why not."""
    from flows.stages import STAGES

    rows = [(name, "passed") for name in run.results if STAGES[name].gate is not None]
    for name in run.gate_failed:
        rows.append((name, f"FAILED: {run.error or 'see the stage log'}"))
    return rows


def judged_rows(run: PipelineRun) -> list[tuple[str, float]]:
    evaluate = run.results.get("evaluate")
    metrics = evaluate.manifest.metrics if evaluate else {}
    picked = [
        (k, v)
        for k, v in sorted(metrics.items())
        if k.removeprefix("eval/").startswith(JUDGED) and not k.endswith(("_ci_low", "_ci_high"))
    ]
    export = run.results.get("export")
    picked += sorted(
        (k, v) for k, v in (export.manifest.metrics if export else {}).items() if k.endswith("ppl_change")
    )
    return picked


def links(run: PipelineRun) -> list[str]:
    ui = mlflow_ui(run.tracking_uri)
    out = []
    if run.run_id and run.experiment_id:
        out.append(f"- MLflow run: [{run.run_id}]({ui}/#/experiments/{run.experiment_id}/runs/{run.run_id})")
    export = run.results.get("export")
    if export:
        extra = export.manifest.extra
        name, version = extra.get("registered_model_name"), extra.get("registered_model_version")
        if name and version is not None:
            alias = f" (alias `{extra['alias']}`: `{extra['alias_uri']}`)" if extra.get("alias") else ""
            page = f"{ui}/#/models/{name}/versions/{version}"
            out.append(f"- Registered model: [{name} version {version}]({page}){alias}")
        card = Path(export.manifest.path) / "model" / "README.md"
        out.append(f"- Model card: [{card}]({card.as_uri()})")
        for fmt, rel in (extra.get("quantized") or {}).items():
            out.append(f"- Quantized export {fmt}: `{Path(export.manifest.path) / rel}`")
    return out


def summary_markdown(run: PipelineRun) -> str:
    parts = [
        f"# lmforge run {run.run_id or ''}".rstrip(),
        f"{len(run.results)} stages in {run.seconds:.0f} s"
        + (f"; failed at `{run.failed_stage}`" if run.failed_stage else ""),
        "## Stages",
        _table(("stage", "status", "seconds", "key figure", "folder"), stage_rows(run)),
    ]
    judged = judged_rows(run)
    if judged:
        parts += ["## Judged figures", _table(("metric", "value"), judged)]
    gates = gate_rows(run)
    if gates:
        parts += ["## Quality gates", _table(("stage", "gate"), gates)]
    found = links(run)
    if found:
        parts += ["## Links", "\n".join(found)]
    return "\n\n".join(parts) + "\n"


def publish_summary(run: PipelineRun) -> str | None:
    """Create the run's markdown artifact in Prefect (linked to the current flow run); its id, or None
    when Prefect could not take it (the pipeline's result does not depend on it)."""
    from prefect.artifacts import create_markdown_artifact

    try:
        artifact = create_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown=summary_markdown(run),
            description=f"lmforge pipeline run {run.run_id}: stages, judged figures, gates, links",
        )
    except Exception as e:  # an unreachable Prefect API must not fail a finished pipeline
        log.warning("could not publish the run summary artifact to Prefect: %s", e)
        return None
    return str(getattr(artifact, "id", artifact))
