"""Stage `pretrain`: train on this node's ranks (node 0 of the run), then report the result.

The stage function runs in-process (inside the Prefect task); the training itself runs in real
`torchrun` worker processes (`tasks.pretrain.train`). A rank that dies fails the stage with that
rank's error and the tail of its log; re-running the stage resumes from the latest checkpoint. Other
nodes of a multi-node run join with `python -m tasks.pretrain` (`tasks/pretrain/join.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from conf.pretrain import PretrainConfig
from tasks.common.artifacts import Manifest
from tasks.common.jsonl import read_jsonl
from tasks.common.stage import StageReport
from tasks.common.tracking import MetricLogger
from tasks.pretrain.launch import SPEC_FILE, PretrainError, run_ranks, worker_env, write_spec
from tasks.pretrain.plot import plot_losses
from tasks.pretrain.rendezvous import announced

log = logging.getLogger("lmforge.pretrain")
# what records this run, not its result (wall-clock timings, a resume point, absolute input paths): left
# out of the content hash, so a bit-identical retraining keeps every downstream stage cached
VOLATILE = ("train_summary.json", "metrics.jsonl", SPEC_FILE)


def pretrain(cfg: PretrainConfig, inputs: dict[str, Manifest], out: Path, log_: MetricLogger) -> StageReport:
    """Train the model on the tokenizer stage's shards; the output is `model/` (+ metrics, samples, plot)."""
    source = inputs["tokenizer"]
    source.file("tokens/index.json")  # raises, naming the stage, when the shards are missing
    if not source.files_under("tokenizer/"):
        raise FileNotFoundError(f"stage {source.stage} ({source.path}) has no tokenizer/ folder")
    if cfg.node_rank != 0:
        raise ValueError(
            "the pretrain stage runs on node 0; other nodes join with `python -m tasks.pretrain`"
        )
    out = Path(out)
    if finished_training(cfg, out):  # trained before the stage could finish (e.g. tracking failed)
        log.info("pretrain: %s already holds the trained model; reporting it", out)
    else:
        train(cfg, source, out, log_)
    return report(out, log_)


def finished_training(cfg: PretrainConfig, out: Path) -> bool:
    summary = out / "train_summary.json"
    if not (summary.exists() and (out / "model" / "config.json").exists()):
        return False
    return json.loads(summary.read_text()).get("steps") == cfg.max_steps


def train(cfg: PretrainConfig, source: Manifest, out: Path, log_: MetricLogger) -> None:
    """Run node 0's ranks, announcing the run to joining nodes while it lasts."""
    spec = write_spec(cfg, source.dir, source.dir / "tokenizer", out / SPEC_FILE)
    env = worker_env(cfg, log_.run_id, getattr(log_, "tracking_uri", None))
    (out / "train_summary.json").unlink(missing_ok=True)
    # the stage folder is <artifacts root>/pretrain/<hash12>: announce it to nodes that cannot hash
    announce = (
        announced(out.parent.parent, cfg.rdzv_id, spec, out, cfg.nnodes)
        if cfg.nnodes > 1
        else contextlib.nullcontext()
    )
    with announce:
        try:
            run_ranks(cfg, spec, out, env)
        except PretrainError as e:
            if not finished_training(cfg, out):
                raise
            # rank 0 writes the summary after the model and after every collective: the result is complete
            log.warning(
                "a worker died after training finished; the outputs are complete: %s", str(e).splitlines()[0]
            )


def report(out: Path, log_: MetricLogger) -> StageReport:
    """Plot the curves, log the model folder, and turn the workers' summary into the stage report."""
    summary = json.loads((out / "train_summary.json").read_text())
    metrics = read_jsonl(out / "metrics.jsonl")
    plot_losses(metrics, out, log_)
    log_.log_artifact(out / "model", "model")
    log_.log_dict(summary, "train_summary.json")
    first = metrics[0]["loss"] if metrics else float("nan")
    final = {"final/train_loss": summary["final_loss"], "first/train_loss": first}
    for key in ("val_loss", "val_ppl", "tokens_per_s", "flops_per_s", "mfu", "peak_memory_gib"):
        if summary.get(key) is not None:
            final[f"final/{key}"] = summary[key]
    log.info(
        "pretrain: %d steps, loss %.3f -> %.3f, val %s",
        summary["steps"],
        first,
        summary["final_loss"],
        f"{summary['val_loss']:.3f}" if "val_loss" in summary else "n/a",
    )
    return StageReport(
        counts={"steps": summary["steps"], "tokens": summary["tokens"], "parameters": summary["n_params"]},
        metrics=final,
        extra={
            "model_dir": "model",
            "world_size": summary["world_size"],
            "resumed_from_step": summary["resumed_from_step"],
            "peak_flops_source": summary["peak_flops_source"],
        },
        volatile=VOLATILE,
    )


def gate(cfg: PretrainConfig, manifest: Manifest) -> str | None:
    val = manifest.metrics.get("final/val_loss")
    if cfg.max_val_loss is not None and val is not None and val > cfg.max_val_loss:
        return f"final validation loss {val:.3f} is above pretrain.max_val_loss={cfg.max_val_loss}"
    first, last = manifest.metrics.get("first/train_loss"), manifest.metrics.get("final/train_loss")
    if first is not None and last is not None and not last < first:
        return f"training loss did not fall ({first:.3f} at the first step, {last:.3f} at the end)"
    return None
