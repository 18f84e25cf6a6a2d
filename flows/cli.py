"""`lmforge` command line: run the lifecycle or one stage, show the config, and standalone data tools."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from conf.schema import PipelineConfig
    from flows.runner import PipelineRun
    from tasks.common.artifacts import Manifest


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="preset in conf/presets (default: tiny)")
    p.add_argument("--config", help="YAML file merged over the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set dedup.normalize=false (repeatable)",
    )


def _load(args: argparse.Namespace) -> PipelineConfig:
    from conf.loader import load_config

    overrides = [o for item in args.overrides for o in item.split()] if args.overrides else []
    return load_config(args.preset, args.config, overrides)


def _prefect_env() -> None:
    """Quiet defaults for a local run: no analytics; ephemeral server unless PREFECT_API_URL is set;
    no per-batch progress bars from transformers/datasets/hub, whose lines would bury the stage logs
    (each stage logs its own progress). Any of these can be overridden from the environment."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # also turns the Trainer's tqdm off
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def print_summary(run: PipelineRun, console: Console | None = None) -> None:
    """The run's stage table, key metrics, model card and registry entry, and where to look in MLflow."""
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 150)
    console.print(_stage_table(run))
    if "evaluate" in run.results:
        metrics = run.results["evaluate"].manifest.metrics
        shown = [f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("eval/")]
        console.print("key metrics: " + ", ".join(shown))
    if "export" in run.results:
        _print_export(console, run.results["export"].manifest)
    if run.results:
        root = Path(next(iter(run.results.values())).manifest.path).parents[1]
        console.print(f"stage folders under {root}")
    console.print(f"total {run.seconds:.1f}s; MLflow run {run.run_id}")
    if run.error:
        console.print(f"[red]{run.failed_stage} failed:[/red] {run.error}")
    _print_mlflow_ui(console, run.tracking_uri, run.experiment_id)


def _stage_table(run: PipelineRun) -> Table:
    """One row per stage: status, seconds, key figure and folder; a failed stage last, in red."""
    from rich.table import Table

    from flows.stages import STAGES

    table = Table(title="lmforge pipeline")
    for col in ("stage", "status", "seconds", "key figure", "folder"):
        table.add_column(col)
    for name, r in run.results.items():
        folder = Path(r.manifest.path)
        table.add_row(
            name,
            r.status,
            f"{r.seconds:.1f}",
            r.key_figure(STAGES[name].key_figure),
            f"{folder.parent.name}/{folder.name}",
        )
    if run.failed_stage:
        table.add_row(run.failed_stage, "[red]failed[/red]", "", "", "")
    return table


def _print_export(console: Console, export: Manifest) -> None:
    console.print(f"model card: {Path(export.path) / 'model' / 'README.md'}")
    if export.extra.get("registered_model_name"):
        console.print(
            f"registered model: {export.extra['registered_model_name']} "
            f"version {export.extra.get('registered_model_version')}"
        )


def _print_mlflow_ui(console: Console, uri: str, experiment_id: str | None) -> None:
    """How to open the run in MLflow's UI; the store URI goes in the environment (`ps` shows a command
    line to every user) and is printed with any password masked."""
    from conf.schema import redact_uri

    console.print(
        f"MLflow UI: make ui   (or: MLFLOW_BACKEND_STORE_URI={redact_uri(uri)} mlflow ui --host 127.0.0.1 "
        "--port 5000)"
    )
    if experiment_id:
        console.print(
            f"  then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs "
            "(expand a pipeline run to see its stages)"
        )


def cmd_run(args: argparse.Namespace, targets: list[str] | None = None) -> int:
    cfg = _load(args)
    _prefect_env()
    from flows.lifecycle import FLOWS

    flow_fn = FLOWS[getattr(args, "flow", None) or "lifecycle"]
    holder: dict[str, PipelineRun] = {}
    try:
        run = flow_fn(cfg, targets) if flow_fn.name == "lifecycle" else flow_fn(cfg)
        holder["run"] = run
    except Exception as e:  # the flow failed: show what finished and why it stopped
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print_summary(holder["run"])
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    return cmd_run(args, targets=[args.name])


def cmd_align_compare(args: argparse.Namespace) -> int:
    """Every alignment algorithm from the same SFT model, compared on one MLflow run (flows/compare.py)."""
    from rich.console import Console

    from flows.compare import ALGORITHMS, algorithm_configs, align_compare, present_columns, table_markdown

    cfg = _load(args)
    algorithms = [a for item in args.algorithms for a in item.split(",") if a] if args.algorithms else None
    algorithm_configs(cfg, algorithms or list(ALGORITHMS))  # a bad algorithm or combination: exit 2 now
    _prefect_env()
    try:
        comparison = align_compare(cfg, algorithms)
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(table_markdown(comparison.rows, present_columns(comparison.results)))
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(f"total {comparison.seconds:.1f}s; MLflow run {comparison.run_id} (table, plot, metrics)")
    for algorithm in comparison.failed:
        console.print(f"[red]{algorithm} failed:[/red] {comparison.results[algorithm].error}")
    _print_mlflow_ui(console, comparison.tracking_uri, comparison.experiment_id)
    return 1 if comparison.failed else 0


def cmd_show_config(args: argparse.Namespace) -> int:
    import yaml

    cfg = _load(args)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    from tasks.dedup.cli import run

    return run(args)


def cmd_scrub(args: argparse.Namespace) -> int:
    from tasks.scrub.cli import run

    return run(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from tasks.serve.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the whole lifecycle (or a sub-flow) with caching")
    _config_args(p)
    p.add_argument(
        "--flow",
        default="lifecycle",
        choices=["lifecycle", "data", "pretrain", "align", "evaluate"],
        help="the whole lifecycle (default) or one sub-flow, with cached upstream stages",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stage", help="run one stage, with its upstream stages from cache")
    p.add_argument("name")
    _config_args(p)
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser(
        "align-compare",
        help="train every alignment algorithm (ppo, grpo, rloo, dpo) from the same SFT model and compare "
        "them on one MLflow run",
    )
    _config_args(p)
    p.add_argument(
        "--algorithms",
        action="append",
        metavar="A,B",
        help="comma-separated subset of ppo,grpo,rloo,dpo (default: all four)",
    )
    p.set_defaults(func=cmd_align_compare)

    p = sub.add_parser("show-config", help="print the resolved configuration")
    _config_args(p)
    p.set_defaults(func=cmd_show_config)

    from tasks.dedup.cli import add_arguments as dedup_arguments

    p = sub.add_parser("dedup", help="remove exact and near duplicates from a JSONL file (MinHash LSH)")
    dedup_arguments(p)
    p.set_defaults(func=cmd_dedup)

    from tasks.scrub.cli import add_arguments as scrub_arguments

    p = sub.add_parser("scrub", help="replace PII in a JSONL file with <TYPE> placeholders, offsets in `pii`")
    scrub_arguments(p)
    p.set_defaults(func=cmd_scrub)

    from tasks.serve.cli import add_arguments as serve_arguments

    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API, with a playground")
    serve_arguments(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # torchao (imported by peft) warns about each CUDA kernel library it cannot load on a CPU machine
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Dask sets its loggers' levels from its config when `distributed` is first imported (after this)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from conf.loader import ConfigError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
