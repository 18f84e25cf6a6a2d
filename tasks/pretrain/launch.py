"""Stage `pretrain`: launch the training ranks with torchrun, stream their logs, report the result.

The stage function runs in-process (inside the Prefect task); the training itself runs in real
`torchrun` worker processes (`tasks.pretrain.train`). A rank that dies fails the stage with that
rank's error and the tail of its log; re-running the stage resumes from the latest checkpoint.

Other nodes of a multi-node run join with the same spec file::

    python -m tasks.pretrain --spec <stage folder>/run_spec.json --out <stage folder> --node-rank 1

The stage folder is content-addressed, so a node started before the run (a pod of a Kubernetes Job)
cannot name it. For such nodes, node 0 also writes `<artifacts root>/pretrain/rendezvous/<rdzv_id>.json`
(`{"spec": ..., "out": ...}`) while its torchrun runs, and they wait for that file::

    python -m tasks.pretrain join --artifacts-root <artifacts root> --rdzv-id <rdzv_id> --node-rank 1
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conf.pretrain import PretrainConfig
from tasks.common.artifacts import Manifest, atomic_write_text
from tasks.common.stage import PermanentStageError, StageReport
from tasks.common.tracking import RUN_ID_ENV, MetricLogger

log = logging.getLogger("lmforge.pretrain")
REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = "run_spec.json"
RENDEZVOUS_DIR = "rendezvous"  # under <artifacts root>/pretrain/, beside the stage folders
JOIN_TIMEOUT_S = 3600.0
TAIL_LINES = 40
_RANK_PREFIX = re.compile(r"^\[[A-Za-z_]+(\d+)\]:(.*)$")  # torchrun --tee: "[default0]:<line>"


class PretrainError(RuntimeError):
    """The training workers failed; the message carries the failing rank's error and log tail."""


class DivergedError(PretrainError, PermanentStageError):
    """A rank stopped on a non-finite loss: deterministic for a given seed, so retrying cannot help."""


def write_spec(cfg: PretrainConfig, tokens_dir: Path, tokenizer_dir: Path, path: Path) -> Path:
    """What every rank needs to start: the config and the input folders."""
    spec = {
        "config": cfg.model_dump(mode="json"),
        "tokens_dir": str(tokens_dir),
        "tokenizer_dir": str(tokenizer_dir),
    }
    atomic_write_text(path, json.dumps(spec, indent=2))
    return path


def rendezvous_file(artifacts_root: Path, rdzv_id: str) -> Path:
    """Where node 0 of run `rdzv_id` announces its spec and stage folder to the joining nodes."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", rdzv_id):
        raise ValueError(
            f"pretrain.rdzv_id={rdzv_id!r} must be a plain name (letters, digits, '.', '_', '-')"
        )
    return Path(artifacts_root) / "pretrain" / RENDEZVOUS_DIR / f"{rdzv_id}.json"


def flow_over_file(artifacts_root: Path, rdzv_id: str) -> Path:
    """Written by whatever runs node 0's flow when that flow ends (the Kubernetes job template's pod 0):
    a joiner still waiting then knows no run will be announced (e.g. the pretrain stage was cached)."""
    return rendezvous_file(artifacts_root, rdzv_id).with_suffix(".over")


def threads_per_proc(cfg: PretrainConfig) -> int:
    return cfg.threads_per_proc or max(1, (os.cpu_count() or 1) // cfg.nproc_per_node)


def torchrun_command(cfg: PretrainConfig, spec: Path, out: Path, log_dir: Path) -> list[str]:
    """`python -m torch.distributed.run ... -m tasks.pretrain.train` for this node (no PATH lookup)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={cfg.nproc_per_node}",
        f"--nnodes={cfg.nnodes}",
        "--max-restarts=0",
        "--tee=3",
        f"--log-dir={log_dir}",
    ]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        cmd.append("--standalone")  # c10d rendezvous on a free local port picked by the agent itself
    elif cfg.rdzv_backend == "static":
        host, _, port = cfg.rdzv_endpoint.rpartition(":")
        cmd += [
            "--rdzv-backend=static",
            f"--master-addr={host}",
            f"--master-port={port}",
            f"--node-rank={cfg.node_rank}",
        ]
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rdzv_endpoint}", f"--rdzv-id={cfg.rdzv_id}"]
    return cmd + ["-m", "tasks.pretrain.train", f"--spec={spec}", f"--out={out}"]


def worker_env(cfg: PretrainConfig, run_id: str | None, tracking_uri: str | None) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(threads_per_proc(cfg))
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop(RUN_ID_ENV, None)
    if run_id and tracking_uri:
        env[RUN_ID_ENV], env["MLFLOW_TRACKING_URI"] = run_id, tracking_uri
    return env


def run_torchrun(cmd: list[str], env: dict[str, str], out: Path, log_dir: Path) -> None:
    """Run torchrun, stream every line to the logger, and raise `PretrainError` if any rank failed."""
    tails: dict[int, collections.deque] = collections.defaultdict(
        lambda: collections.deque(maxlen=TAIL_LINES)
    )
    agent: collections.deque = collections.deque(maxlen=4000)  # holds torchrun's failure report
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            m = _RANK_PREFIX.match(line)
            if m:
                tails[int(m.group(1))].append(m.group(2))
            else:
                agent.append(line)
            log.info("%s", line)
        code = proc.wait()
    except BaseException:  # interrupted or cancelled: take the workers down with us
        _terminate(proc)
        raise
    if code != 0:
        message = failure_message(code, list(agent), tails, out, log_dir)
        raise (DivergedError if "NonFiniteLossError" in message else PretrainError)(message)


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rank_log_tail(log_dir: Path, local_rank: int, n: int = TAIL_LINES) -> list[str]:
    """The end of a rank's own stderr file (complete even when the tee'd stream was cut off by its death)."""
    files = sorted(
        Path(log_dir).glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime
    )
    if not files:
        return []
    return files[-1].read_text(errors="replace").splitlines()[-n:]


_SECONDARY = ("Connection closed by peer", "remote worker crashing", "Connection reset by peer")


def worker_failures(agent_text: str) -> list[dict[str, Any]]:
    """torchrun's failure report as records, the most likely cause first.

    torchrun orders failures by whole-second timestamps, so a rank that only saw its peer vanish (a gloo
    'connection closed' error) or was SIGTERMed by the agent can be named the root cause; those rank last.
    """
    found = []
    is_root = False
    for block in re.split(r"^\[\d+\]:\s*$", agent_text, flags=re.M)[1:]:
        rank = re.search(r"rank\s*:\s*(\d+) \(local_rank: (\d+)\)", block)
        if not rank:
            continue
        code = re.search(r"exitcode\s*:\s*(-?\d+)[^\n]*?(?:\((SIG\w+)\))?\s*$", block, re.M)
        errors = [
            ln.strip() for ln in block.splitlines() if re.match(r"\s+\w+(\.\w+)*(Error|Exception)\b.*:", ln)
        ]
        sig = code.group(2) if code else None
        score = 2 if sig == "SIGTERM" else 1 if any(m in block for m in _SECONDARY) else 0
        found.append(
            {
                "rank": int(rank.group(1)),
                "local_rank": int(rank.group(2)),
                "exitcode": code.group(1) if code else "?",
                "signal": sig,
                "error": errors[-1] if errors else None,
                "score": score,
                "root": is_root,
            }
        )
        is_root = is_root or "Root Cause" in block
    # a block that follows the "Root Cause" header is torchrun's own pick: prefer it among equals
    return sorted(found, key=lambda f: (f["score"], not f["root"]))


def failure_message(
    code: int, agent: list[str], tails: dict[int, Any], out: Path, log_dir: Path | None = None
) -> str:
    """The rank that failed first, its error, the tail of its log, and where the stage resumes."""
    failures = worker_failures("\n".join(agent))
    parts = [f"pretrain workers failed (torchrun exit code {code})"]
    local = None
    if failures:
        f = failures[0]
        local = f["local_rank"]
        parts[0] += f": rank {f['rank']} (local rank {local}) died with exit code {f['exitcode']}"
        parts[0] += f" ({f['signal']})" if f["signal"] else ""
        if f["error"]:
            parts.append(f["error"])
    elif tails:
        local = min(tails)
    tail = (rank_log_tail(log_dir, local) if log_dir and local is not None else []) or list(
        tails.get(local, [])
    )
    if tail:
        parts.append(f"--- last lines of local rank {local} ---\n" + "\n".join(tail))
    else:
        parts.append("--- last launcher lines ---\n" + "\n".join(agent[-TAIL_LINES:]))
    from tasks.pretrain.checkpoint import CHECKPOINT_DIR, latest_checkpoint  # (imports torch)

    last = latest_checkpoint(out / CHECKPOINT_DIR)
    if last:
        parts.append(f"checkpoint {last[1]} is kept: re-running the stage resumes from step {last[0]}")
    return "\n".join(parts)


def _plot_losses(metrics: list[dict], out: Path, logger: MetricLogger) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in metrics if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in metrics if "val_loss" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    try:
        logger.log_figure(fig, "plots/loss.png")
    finally:
        plt.close(fig)


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
    if finished_training(
        cfg, out
    ):  # trained before the stage could finish (e.g. tracking failed): no re-train
        log.info("pretrain: %s already holds the trained model; reporting it", out)
    else:
        launch(cfg, source, out, log_)
    return report(out, log_)


def finished_training(cfg: PretrainConfig, out: Path) -> bool:
    summary = out / "train_summary.json"
    if not (summary.exists() and (out / "model" / "config.json").exists()):
        return False
    return json.loads(summary.read_text()).get("steps") == cfg.max_steps


def launch(cfg: PretrainConfig, source: Manifest, out: Path, log_: MetricLogger) -> None:
    spec = write_spec(cfg, source.dir, source.dir / "tokenizer", out / SPEC_FILE)
    env = worker_env(cfg, log_.run_id, getattr(log_, "tracking_uri", None))
    (out / "train_summary.json").unlink(missing_ok=True)
    # the stage folder is <artifacts root>/pretrain/<hash12>: announce it to nodes that cannot compute the hash
    announce = rendezvous_file(out.parent.parent, cfg.rdzv_id) if cfg.nnodes > 1 else None
    if announce:
        atomic_write_text(announce, json.dumps({"spec": str(spec), "out": str(out)}))
        log.info(
            "pretrain: nodes 1..%d can join with `python -m tasks.pretrain join --artifacts-root %s "
            "--rdzv-id %s --node-rank N`",
            cfg.nnodes - 1,
            out.parent.parent,
            cfg.rdzv_id,
        )
    with tempfile.TemporaryDirectory(prefix="lmforge-torchrun-") as log_dir:
        try:
            run_torchrun(torchrun_command(cfg, spec, out, Path(log_dir)), env, out, Path(log_dir))
        except PretrainError as e:
            if not finished_training(cfg, out):
                raise
            # rank 0 writes the summary after the model and after every collective: the result is complete
            log.warning(
                "a worker died after training finished; the outputs are complete: %s", str(e).splitlines()[0]
            )
        finally:
            if announce:  # a node that starts later must not join a finished run
                announce.unlink(missing_ok=True)


def report(out: Path, log_: MetricLogger) -> StageReport:
    """Plot the curves, log the model folder, and turn the workers' summary into the stage report."""
    summary = json.loads((out / "train_summary.json").read_text())
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    _plot_losses(metrics, out, log_)
    log_.log_artifact(out / "model", "model")
    log_.log_dict(summary, "train_summary.json")
    first = metrics[0]["loss"] if metrics else float("nan")
    final = {"final/train_loss": summary["final_loss"], "first/train_loss": first}
    for key in ("val_loss", "val_ppl", "tokens_per_s", "flops_per_s", "mfu"):
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
    )


def gate(cfg: PretrainConfig, manifest: Manifest) -> str | None:
    val = manifest.metrics.get("final/val_loss")
    if cfg.max_val_loss is not None and val is not None and val > cfg.max_val_loss:
        return f"final validation loss {val:.3f} is above pretrain.max_val_loss={cfg.max_val_loss}"
    first, last = manifest.metrics.get("first/train_loss"), manifest.metrics.get("final/train_loss")
    if first is not None and last is not None and not last < first:
        return f"training loss did not fall ({first:.3f} at the first step, {last:.3f} at the end)"
    return None


def join(spec_file: Path, out: Path, node_rank: int, nproc_per_node: int | None = None) -> None:
    """Start this node's ranks of the run described by node 0's `spec_file`, writing into `out`."""
    data = json.loads(Path(spec_file).read_text())
    update = {"node_rank": node_rank} | ({"nproc_per_node": nproc_per_node} if nproc_per_node else {})
    cfg = PretrainConfig.model_validate({**data["config"], **update})
    with tempfile.TemporaryDirectory(prefix="lmforge-torchrun-") as tmp:
        spec = write_spec(cfg, Path(data["tokens_dir"]), Path(data["tokenizer_dir"]), Path(tmp) / SPEC_FILE)
        cmd = torchrun_command(cfg, spec, Path(out), Path(tmp) / "logs")
        run_torchrun(cmd, worker_env(cfg, None, None), Path(out), Path(tmp) / "logs")


def wait_for_rendezvous(
    artifacts_root: Path, rdzv_id: str, timeout: float, poll: float = 2.0
) -> dict[str, str] | None:
    """Node 0's announcement `{"spec": ..., "out": ...}` once its stage has launched torchrun, or None when
    node 0's flow ended without announcing one (its flow-over file exists)."""
    path = rendezvous_file(artifacts_root, rdzv_id)
    over = flow_over_file(artifacts_root, rdzv_id)
    log.info("waiting up to %.0f s for node 0 to announce run %s at %s", timeout, rdzv_id, path)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if over.exists():
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"node 0 did not start pretrain run {rdzv_id!r} within {timeout:g} s: no rendezvous file {path} "
                "(is node 0's artifacts root the same shared folder, and did its flow reach the pretrain stage?)"
            )
        time.sleep(min(poll, left))
    return json.loads(path.read_text())  # written atomically: complete once it exists


def main(argv: list[str] | None = None) -> None:
    """Join a multi-node run from another node (node 0 runs the stage itself).

    `--spec FILE --out DIR --node-rank N` joins a run whose stage folder is known; `join --artifacts-root
    DIR --rdzv-id ID --node-rank N` first waits for node 0 to announce it.
    """
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv[:1] == ["join"]:
        p = argparse.ArgumentParser(
            prog="python -m tasks.pretrain join",
            description="Wait for node 0 of run ID to launch, then start this node's ranks.",
        )
        p.add_argument(
            "--artifacts-root", required=True, type=Path, help="node 0's artifacts root (shared storage)"
        )
        p.add_argument("--rdzv-id", required=True, help="the run's pretrain.rdzv_id")
        p.add_argument("--node-rank", type=int, required=True)
        p.add_argument("--nproc-per-node", type=int, help="override the config's processes per node")
        p.add_argument("--timeout", type=float, default=JOIN_TIMEOUT_S, help="seconds to wait for node 0")
        args = p.parse_args(argv[1:])
        try:
            found = wait_for_rendezvous(args.artifacts_root, args.rdzv_id, args.timeout)
        except TimeoutError as e:
            sys.exit(f"error: {e}")
        if found is None:
            log.info(
                "node 0's flow for run %s ended without a pretraining run to join (the stage was cached, or "
                "the flow stopped before it): nothing to do",
                args.rdzv_id,
            )
            return
        log.info("joining run %s as node %d: %s", args.rdzv_id, args.node_rank, found["out"])
        join(Path(found["spec"]), Path(found["out"]), args.node_rank, args.nproc_per_node)
        return
    p = argparse.ArgumentParser(
        prog="python -m tasks.pretrain",
        description="Start this node's pretraining ranks of a multi-node run.",
    )
    p.add_argument("--spec", required=True, help="run_spec.json of the run (written by node 0's stage)")
    p.add_argument("--out", required=True, help="the stage folder (shared storage; node 0 writes into it)")
    p.add_argument("--node-rank", type=int, required=True)
    p.add_argument("--nproc-per-node", type=int, help="override the config's processes per node")
    args = p.parse_args(argv)
    join(Path(args.spec), Path(args.out), args.node_rank, args.nproc_per_node)
