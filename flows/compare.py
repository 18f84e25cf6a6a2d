"""`align-compare`: every alignment algorithm trained from the same SFT model and judged side by side.

For each algorithm (ppo, grpo, rloo, dpo) the flow runs the pipeline through `evaluate` with
`ppo.algorithm=<algorithm>`. Content addressing does the sharing: every stage upstream of `ppo` (data,
tokenizer, pretraining, SFT, both reward models) has the same hash for all four, so it is built once and
comes from cache for the others, while each algorithm gets its own `ppo` and `evaluate` folders. Each
algorithm's pipeline run is nested under one `align-compare` parent run, which carries the comparison:

- `compare/table.md` and `compare/table.json`: algorithm x (judge win rate vs SFT with its 95% interval,
  judge reward, ROUGE-L, token F1, distinct responses, KL to SFT, perplexity, and last the win rate judged
  by the reward model the RL algorithms optimised, labelled as such), plus SFT and best-constant rows;
- `compare/comparison.png`: one bar chart per figure, SFT as a dashed line, intervals as error bars;
- metrics `compare/<algorithm>/<name>` for every `eval/<name>` in that algorithm's evaluate manifest (in
  evaluate's names `ppo` is the slot of the aligned policy, whichever algorithm trained it).

An algorithm whose run fails (a quality gate, a crash) keeps its row, with the error and whatever its
finished stage folders hold (a failed gate still leaves the stage's manifest); the others go on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from prefect import flow
from pydantic import ValidationError

from conf.loader import ConfigError, apply_override, format_validation_error
from conf.schema import PipelineConfig
from flows.environment import artifacts_root, tracking_uri
from flows.lifecycle import resolve_config
from flows.runner import run_pipeline
from flows.stages import STAGES, plan
from tasks.common.artifacts import Manifest, read_manifest, stage_dir
from tasks.common.tracking import MetricLogger, Tracker

log = logging.getLogger(__name__)
ALGORITHMS = ("ppo", "grpo", "rloo", "dpo")
TARGETS = ["evaluate"]
SFT_ROW, CONSTANT_ROW = "sft (reference)", "best constant answer"


@dataclass(frozen=True)
class Column:
    """One figure of the table: evaluate's metric for the aligned policy, and the same figure for the SFT
    model and for the best constant answer where evaluate reports one."""

    header: str
    metric: str
    sft: str | None = None
    constant: str | None = None
    ci: bool = False  # evaluate reports `<metric>_ci_low` / `<metric>_ci_high`


COLUMNS = (
    Column("judge win rate vs SFT", "eval/judge_win_rate_ppo_vs_sft", ci=True),
    Column("judge reward", "eval/judge_reward_ppo", "eval/judge_reward_sft", "eval/judge_reward_constant"),
    Column("ROUGE-L", "eval/rouge_l_ppo", "eval/rouge_l_sft", "eval/rouge_l_constant"),
    Column("token F1", "eval/token_f1_ppo", "eval/token_f1_sft", "eval/token_f1_constant"),
    Column("distinct", "eval/distinct_ppo", "eval/distinct_sft"),
    Column("KL to SFT", "eval/kl_ppo_sft"),
    Column("ppl", "eval/ppl_ppo", "eval/ppl_sft"),
    Column("RM win rate (self-judged)", "eval/win_rate_ppo_vs_sft"),
)


@dataclass
class AlgorithmResult:
    """One algorithm's pipeline run: its evaluate metrics, or the error that stopped it."""

    algorithm: str
    run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # the evaluate manifest's metrics
    align_seconds: float | None = None  # how long the ppo stage trained (also when it came from cache)


@dataclass
class Comparison:
    """What `align_compare` returns: the parent run and one result per algorithm, in order."""

    run_id: str | None
    tracking_uri: str
    experiment_id: str | None
    results: dict[str, AlgorithmResult]
    rows: list[dict[str, Any]]
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [a for a, r in self.results.items() if r.error]


# ---- configs and runs ---------------------------------------------------------------------------------
def algorithm_configs(cfg: PipelineConfig, algorithms: list[str]) -> dict[str, PipelineConfig]:
    """`cfg` with `ppo.algorithm` set to each algorithm, each validated before anything runs, so a bad
    combination (say grpo with a batch size that is no multiple of num_generations) fails at once."""
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise ConfigError(
            f"unknown algorithm(s) {unknown or algorithms}; choose from {', '.join(ALGORITHMS)}"
        )
    configs = {}
    for algorithm in algorithms:
        data = apply_override(cfg.model_dump(), ["ppo", "algorithm"], algorithm)
        try:
            configs[algorithm] = PipelineConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"ppo.algorithm={algorithm}: {format_validation_error(e)}") from None
    return configs


def stage_manifests(cfg: PipelineConfig, targets: list[str]) -> dict[str, Manifest]:
    """The finished stage folders `cfg` addresses for `targets`, read from disk in DAG order (as the
    runner hashes them), up to the first one missing: also what a failed run left behind."""
    root = artifacts_root(cfg.artifacts_root)
    found: dict[str, Manifest] = {}
    for name in plan(targets):
        spec = STAGES[name]
        if any(up not in found for up in spec.inputs):
            break
        manifest = read_manifest(
            stage_dir(root, name, spec.hash_for(cfg, {up: found[up] for up in spec.inputs}))
        )
        if manifest is None:
            break
        found[name] = manifest
    return found


def train_and_evaluate(
    cfg: PipelineConfig, algorithm: str, run_name: str, tracker: Tracker
) -> AlgorithmResult:
    """The pipeline through `evaluate` for one algorithm (cached upstream); a failure is recorded, not
    raised, so the comparison still covers the algorithms that finished."""
    result = AlgorithmResult(algorithm)
    started = time.perf_counter()
    try:
        result.run_id = run_pipeline(cfg, TARGETS, run_name=run_name).run_id
    except Exception as e:  # a quality gate or a crash: keep the row, with the reason
        result.error = f"{type(e).__name__}: {e}"
        result.run_id = run_id_by_name(tracker, run_name)
        log.error("align-compare: %s failed: %s", algorithm, result.error)
    result.seconds = time.perf_counter() - started
    manifests = stage_manifests(cfg, TARGETS)
    if "evaluate" in manifests:
        result.metrics = dict(manifests["evaluate"].metrics)
    if "ppo" in manifests:
        result.align_seconds = manifests["ppo"].seconds
    return result


def run_id_by_name(tracker: Tracker, run_name: str) -> str | None:
    """The run a failed `run_pipeline` started (it raises before returning its id)."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"attributes.run_name = '{run_name}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


# ---- the comparison -----------------------------------------------------------------------------------
def finite(value: object) -> TypeGuard[float]:
    """A real number, not None / NaN / inf (metrics a run did not produce are missing or NaN)."""
    return isinstance(value, int | float) and math.isfinite(value)


def present_columns(results: dict[str, AlgorithmResult]) -> list[Column]:
    """The columns some algorithm has a value for (the judge's appear once evaluate reports them)."""
    return [c for c in COLUMNS if any(finite(r.metrics.get(c.metric)) for r in results.values())]


def comparison_rows(results: dict[str, AlgorithmResult]) -> list[dict[str, Any]]:
    """One row per algorithm (metric name -> value, intervals beside), then the SFT model's and the best
    constant answer's figures, taken from the first algorithm that reports them (all share one SFT)."""
    columns = present_columns(results)
    rows: list[dict[str, Any]] = []
    for algorithm, r in results.items():
        row: dict[str, Any] = {"algorithm": algorithm, "status": "failed: " + r.error if r.error else "ok"}
        for c in columns:
            names = [c.metric, f"{c.metric}_ci_low", f"{c.metric}_ci_high"] if c.ci else [c.metric]
            row.update({n: r.metrics.get(n) for n in names})
        row["align_seconds"] = r.align_seconds
        rows.append(row)
    for label, attr in ((SFT_ROW, "sft"), (CONSTANT_ROW, "constant")):
        row = {"algorithm": label, "status": "reference"}
        for c in columns:
            source = getattr(c, attr)
            values = [r.metrics[source] for r in results.values() if source and finite(r.metrics.get(source))]
            row[c.metric] = values[0] if values else None
        if any(row[c.metric] is not None for c in columns):
            rows.append(row)
    return rows


def cell(row: dict[str, Any], c: Column) -> str:
    value = row.get(c.metric)
    if not finite(value):
        return "-"
    text = f"{value:.4g}"
    low, high = row.get(f"{c.metric}_ci_low"), row.get(f"{c.metric}_ci_high")
    return f"{text} [{low:.3g}, {high:.3g}]" if c.ci and finite(low) and finite(high) else text


def table_markdown(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """The table as Markdown; intervals in brackets are evaluate's bootstrap 95% intervals."""
    headers = ["algorithm", *(c.header for c in columns), "status"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        status = " ".join(str(row["status"]).replace("|", "/").split())  # one line, no column breaks
        cells = [row["algorithm"], *(cell(row, c) for c in columns), status[:300]]
        lines.append("| " + " | ".join(cells) + " |")
    judged = any(c.metric.startswith("eval/judge_") for c in columns)
    notes = (
        "Judge figures come from the independent judge reward model (trained on pairs disjoint from the "
        "policy's reward model)."
        if judged
        else "No independent judge figures: these evaluate manifests report none."
    )
    notes += (
        " `RM win rate (self-judged)` is judged by the reward model the RL algorithms optimised and shows "
        "reward hacking, not quality. In evaluate's metric names `ppo` is the aligned policy, whichever "
        "algorithm trained it.\n"
    )
    return "\n".join(lines) + "\n\n" + notes


def comparison_metrics(results: dict[str, AlgorithmResult]) -> dict[str, float]:
    """`compare/<algorithm>/<name>` for every finite `eval/<name>`, and the ppo stage's training seconds."""
    out = {}
    for algorithm, r in results.items():
        for name, value in r.metrics.items():
            if name.startswith("eval/") and finite(value):
                out[f"compare/{algorithm}/{name.removeprefix('eval/')}"] = float(value)
        if finite(r.align_seconds):
            out[f"compare/{algorithm}/align_seconds"] = float(r.align_seconds or 0.0)
    return out


def number(row: dict[str, Any], key: str) -> float:
    """`row[key]` as a float; NaN when missing (matplotlib leaves a NaN bar out)."""
    value = row.get(key)
    return float(value) if finite(value) else math.nan


def errors(rows: list[dict[str, Any]], c: Column) -> list[list[float]] | None:
    """Asymmetric error bars from the 95% intervals, when every row has one."""
    if not c.ci:
        return None
    values = [number(r, c.metric) for r in rows]
    lows = [number(r, f"{c.metric}_ci_low") for r in rows]
    highs = [number(r, f"{c.metric}_ci_high") for r in rows]
    if not all(math.isfinite(x) for x in (*values, *lows, *highs)):
        return None
    return [
        [v - lo for v, lo in zip(values, lows, strict=True)],
        [hi - v for v, hi in zip(values, highs, strict=True)],
    ]


def comparison_plot(rows: list[dict[str, Any]], columns: list[Column]) -> Any:
    """One bar chart per figure: a bar per algorithm (error bars: 95% intervals), SFT as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = [r for r in rows if r["status"] != "reference"]
    sft = next((r for r in rows if r["algorithm"] == SFT_ROW), {})
    n = max(len(columns), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, c in zip(axes[0], columns, strict=False):
        values = [number(r, c.metric) for r in algos]
        bars = ax.bar(
            [r["algorithm"] for r in algos], values, yerr=errors(algos, c), capsize=4, color="#4c72b0"
        )
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        if finite(sft.get(c.metric)):
            ax.axhline(sft[c.metric], color="#555555", linestyle="--", label="SFT")
            ax.legend(fontsize=7)
        ax.set_title(c.header, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def log_comparison(parent: MetricLogger, results: dict[str, AlgorithmResult]) -> list[dict[str, Any]]:
    """Table (Markdown + JSON), plot and per-algorithm metrics on the parent run; returns the rows."""
    import matplotlib.pyplot as plt

    rows = comparison_rows(results)
    columns = present_columns(results)
    parent.log_metrics(comparison_metrics(results))
    parent.log_text(table_markdown(rows, columns), "compare/table.md")
    parent.log_dict(rows, "compare/table.json")
    fig = comparison_plot(rows, columns)
    parent.log_figure(fig, "compare/comparison.png")
    plt.close(fig)
    parent.set_tags({f"lmforge.compare.{a}.run_id": r.run_id for a, r in results.items() if r.run_id})
    failed = [a for a, r in results.items() if r.error]
    if failed:
        parent.set_tags({"lmforge.compare.failed": ",".join(failed)})
    return rows


def nest(tracker: Tracker, parent_run_id: str, result: AlgorithmResult) -> None:
    """Put the algorithm's pipeline run under the comparison's run in the MLflow UI."""
    if result.run_id:
        tracker.client.set_tag(result.run_id, "mlflow.parentRunId", parent_run_id)
        tracker.client.set_tag(result.run_id, "lmforge.compare.algorithm", result.algorithm)


# ---- the flow -----------------------------------------------------------------------------------------
@flow(name="align-compare", log_prints=True)
def align_compare(
    config: PipelineConfig | None = None,
    algorithms: list[str] | None = None,
    preset: str = "tiny",
    overrides: list[str] | None = None,
) -> Comparison:
    """Train every alignment algorithm from the same SFT model and compare them on one MLflow run."""
    started = time.perf_counter()
    cfg = resolve_config(config, preset, overrides)
    configs = algorithm_configs(cfg, list(algorithms or ALGORITHMS))
    root = artifacts_root(cfg.artifacts_root)
    tracker = Tracker.for_pipeline(root, tracking_uri(cfg.tracking.tracking_uri), cfg.tracking.experiment)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = tracker.start_pipeline(
        f"{cfg.name}-align-compare-{stamp}",
        params=cfg.model_dump(mode="json"),
        tags={
            "lmforge.kind": "align-compare",
            "lmforge.preset": cfg.preset,
            "lmforge.algorithms": ",".join(configs),
        },
    )
    results: dict[str, AlgorithmResult] = {}
    status = "FAILED"
    try:
        for algorithm, algo_cfg in configs.items():
            log.info("align-compare: %s", algorithm)
            results[algorithm] = train_and_evaluate(
                algo_cfg, algorithm, f"{cfg.name}-{algorithm}-{stamp}", tracker
            )
            nest(tracker, parent.run_id or "", results[algorithm])
        rows = log_comparison(parent, results)
        log.info("align-compare:\n%s", table_markdown(rows, present_columns(results)))
        status = "FINISHED"
    finally:
        tracker.end(parent, status)
    return Comparison(
        parent.run_id,
        tracker.tracking_uri,
        tracker.experiment_id,
        results,
        rows,
        time.perf_counter() - started,
    )
