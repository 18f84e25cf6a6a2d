"""Run a stage's ranks under torchrun on this node, stream their output, and explain a failure.

Training stages (pretrain, ppo with several processes) run their ranks as real `torchrun` workers, so
one launcher decides how: the command, the workers' environment, streaming every line to the stage's
logger, and taking the whole process tree down when the stage fails or is interrupted.

A failure is explained from torchrun's structured records, not from the text of its report:

- every rank runs under `torch.distributed.elastic.multiprocessing.errors.record`, which writes the
  rank's uncaught exception to `$TORCHELASTIC_ERROR_FILE`; with `--log-dir` torchrun points that at
  `<log dir>/<run id>_<random>/attempt_<n>/<local rank>/error.json`, beside the rank's `stdout.log`
  and `stderr.log` (`--tee` keeps those files complete even when the streamed copy is cut off);
- `--event-log-handler=console` makes the agent print one JSON event per worker when the group ends
  (`torchelastic.worker.status.FAILED` with the global rank, local rank and exit code); a rank killed
  by a signal leaves no error file, so its exit code only exists there.

torchrun itself names the "root cause" by whole-second timestamps and can blame a bystander: a rank
that only saw its peer vanish (a gloo "connection closed" error) or that the agent SIGTERMed. Those
rank last here; the rank with a real error or a signal of its own comes first.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.common.process import die_with_parent, die_with_parent_preexec
from tasks.common.tracking import RUN_ID_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
TAIL_LINES = 40
STOP_GRACE_S = 15.0
WORKER_EVENT = "torchelastic.worker.status."
_RANK_LINE = re.compile(r"^\[[A-Za-z_]+\d+\]:")  # --tee prefixes a rank's lines with "[default0]:"
_SECONDARY = ("Connection closed by peer", "remote worker crashing", "Connection reset by peer")


class LaunchError(RuntimeError):
    """The ranks failed; the message names the most likely culprit, its error and the tail of its log."""

    def __init__(
        self, message: str, failures: list[RankFailure] | None = None, returncode: int | None = None
    ):
        super().__init__(message)
        self.failures = failures or []
        self.returncode = returncode


@dataclass(frozen=True)
class Rendezvous:
    """How this node meets the others of a multi-node run (a single-node run uses `--standalone`)."""

    endpoint: str
    nnodes: int
    backend: Literal["static", "c10d"] = "static"
    node_rank: int = 0
    rdzv_id: str = "lmforge"


@dataclass(frozen=True)
class RankFailure:
    """One failed rank, from its error file and the agent's worker event."""

    local_rank: int
    rank: int | None = None  # global rank; None when the agent reported no event
    exitcode: int | None = None
    error: str | None = None  # "ValueError: boom", as `record` wrote it
    traceback: str | None = None
    timestamp: int | None = None

    @property
    def signal(self) -> str | None:
        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return None

    @property
    def exception_type(self) -> str | None:
        return self.error.split(":", 1)[0] if self.error else None

    def blame(self) -> int:
        """0: its own error or signal; 1: it only lost a peer; 2: the agent stopped it."""
        if self.signal == "SIGTERM":
            return 2
        text = f"{self.error or ''}\n{self.traceback or ''}"
        return 1 if any(m in text for m in _SECONDARY) else 0


# ---- the command and the environment ---------------------------------------------------------------
def torchrun_command(
    module: str, args: list[str], nproc_per_node: int, log_dir: Path, rendezvous: Rendezvous | None = None
) -> list[str]:
    """`python -m torch.distributed.run ... -m <module> <args>` (no PATH lookup)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc_per_node}",
        f"--nnodes={rendezvous.nnodes if rendezvous else 1}",
        "--max-restarts=0",
        "--tee=3",
        f"--log-dir={log_dir}",
        "--event-log-handler=console",
    ]
    if rendezvous is None:
        cmd.append("--standalone")  # c10d rendezvous on a free local port picked by the agent itself
    elif rendezvous.backend == "static":
        host, _, port = rendezvous.endpoint.rpartition(":")
        cmd += [
            "--rdzv-backend=static",
            f"--master-addr={host}",
            f"--master-port={port}",
            f"--node-rank={rendezvous.node_rank}",
        ]
    else:
        cmd += [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous.endpoint}",
            f"--rdzv-id={rendezvous.rdzv_id}",
        ]
    return cmd + ["-m", module, *args]


def worker_env(threads: int, run_id: str | None = None, tracking_uri: str | None = None) -> dict[str, str]:
    """This process's environment for the ranks: explicit thread counts (torchrun would set
    OMP_NUM_THREADS=1), unbuffered output, the repo on the path, and the stage's MLflow run if any."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop(RUN_ID_ENV, None)
    if run_id and tracking_uri:
        env[RUN_ID_ENV], env["MLFLOW_TRACKING_URI"] = run_id, tracking_uri
    return env


# ---- running --------------------------------------------------------------------------------------
def run_torchrun(
    cmd: list[str], env: dict[str, str], log_dir: Path, what: str, logger: logging.Logger
) -> None:
    """Run torchrun, log every line, and raise `LaunchError` if any rank failed.

    torchrun runs in a session of its own (and starts each rank in one): an interrupt or a failure here
    stops torchrun, whose agent stops its ranks; ranks that outlive a killed agent are killed too.
    If this process is killed outright (`kill -9`), the kernel kills torchrun (`PR_SET_PDEATHSIG`, set
    for the thread that waits here), and each rank follows its agent (`rank_dies_with_agent`).
    """
    logger.info("launching: %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
        preexec_fn=die_with_parent_preexec(),
    )
    events: list[dict[str, Any]] = []
    launcher: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            _route(line.rstrip("\n"), events, launcher, logger)
        code = proc.wait()
    except BaseException:  # interrupted or cancelled: take the ranks down with us
        stop(proc, events)
        raise
    if code != 0:
        stop(proc, events)
        failures = rank_failures(events, log_dir)
        raise LaunchError(failure_message(what, code, failures, log_dir, list(launcher)), failures, code)


def rank_dies_with_agent() -> None:
    """Called first thing by a rank's entry point: die when the torchrun agent that started it dies
    (the agent starts ranks in sessions of their own, so nothing else would stop them)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # started by torchrun, not called directly
        die_with_parent(("torch.distributed.run", "torchrun"))


def _route(
    line: str, events: list[dict[str, Any]], launcher: collections.deque[str], logger: logging.Logger
) -> None:
    """Keep the agent's worker events (logged at DEBUG only), log everything else."""
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if isinstance(event, dict) and str(event.get("name", "")).startswith(WORKER_EVENT):
            events.append(event)
            logger.debug("%s", line)
            return
    if not _RANK_LINE.match(line):
        launcher.append(line)
    logger.info("%s", line)


def stop(proc: subprocess.Popen[str], events: list[dict[str, Any]]) -> None:
    """SIGTERM torchrun's process group (its agent then stops the ranks); SIGKILL it after a grace
    period, and then the ranks' own process groups, which a killed agent can no longer stop."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
        return
    except subprocess.TimeoutExpired:
        pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in {_worker(e)["pid"] for e in events if _worker(e)["pid"]}:
        try:
            os.killpg(pid, signal.SIGKILL)  # each rank leads its own session (torchrun's start_new_session)
        except (ProcessLookupError, PermissionError):
            pass


# ---- explaining a failure --------------------------------------------------------------------------
def _worker(event: dict[str, Any]) -> dict[str, Any]:
    """The worker fields of an agent event: state, global rank, local rank, exit code, pid."""
    meta = event.get("metadata") or {}
    inner = json.loads(meta.get("metadata") or "{}")

    def first(key: str) -> Any:
        value = inner.get(key)
        return value[0] if isinstance(value, list) and value else value

    return {
        "state": meta.get("state"),
        "rank": meta.get("global_rank"),
        "local_rank": first("local_rank"),
        "exitcode": first("exit_code"),
        "pid": first("worker_pid")
        or (int(meta["worker_id"]) if str(meta.get("worker_id")).isdigit() else None),
    }


def run_log_dir(log_dir: Path) -> Path | None:
    """torchrun's folder for the latest attempt of this run: `<log dir>/<run id>_*/attempt_<n>`."""
    attempts = sorted(Path(log_dir).glob("*/attempt_*"), key=lambda p: p.stat().st_mtime)
    return attempts[-1] if attempts else None


def read_error_file(log_dir: Path, local_rank: int) -> dict[str, Any] | None:
    """The exception `record` wrote for this rank: {"error", "traceback", "timestamp"}, or None."""
    attempt = run_log_dir(log_dir)
    path = attempt / str(local_rank) / "error.json" if attempt else None
    if path is None or not path.is_file():
        return None
    data = json.loads(path.read_text(errors="replace"))
    message = data.get("message")
    if isinstance(message, str):  # the format for errors not raised in Python
        return {"error": message, "traceback": None, "timestamp": data.get("timestamp")}
    extra = message.get("extraInfo", {})
    stamp = extra.get("timestamp")
    return {
        "error": message.get("message"),
        "traceback": extra.get("py_callstack"),
        "timestamp": int(stamp) if stamp is not None else None,
    }


def rank_failures(events: list[dict[str, Any]], log_dir: Path) -> list[RankFailure]:
    """The failed ranks of this node, the most likely cause first.

    Failed ranks come from the agent's FAILED events; without them (the agent itself broke) every rank
    that left an error file counts. Among equals the earliest error file wins, then the lowest rank.
    """
    workers = [_worker(e) for e in events]
    failed = [w for w in workers if w["state"] == "FAILED" and w["local_rank"] is not None]
    if not failed:
        attempt = run_log_dir(log_dir)
        found = sorted(int(p.parent.name) for p in attempt.glob("*/error.json")) if attempt else []
        failed = [{"rank": None, "local_rank": lr, "exitcode": None} for lr in found]
    failures = []
    for w in failed:
        recorded = read_error_file(log_dir, w["local_rank"]) or {}
        failures.append(
            RankFailure(
                local_rank=w["local_rank"],
                rank=w["rank"],
                exitcode=w["exitcode"],
                error=recorded.get("error"),
                traceback=recorded.get("traceback"),
                timestamp=recorded.get("timestamp"),
            )
        )
    never = float("inf")
    return sorted(failures, key=lambda f: (f.blame(), f.timestamp or never, f.rank or 0, f.local_rank))


def rank_log_tail(log_dir: Path, local_rank: int, n: int = TAIL_LINES) -> list[str]:
    """The end of a rank's own stderr file (complete even when the streamed copy was cut off by its death)."""
    attempt = run_log_dir(log_dir)
    path = attempt / str(local_rank) / "stderr.log" if attempt else None
    if path is None or not path.is_file():
        return []
    return path.read_text(errors="replace").splitlines()[-n:]


def failure_message(
    what: str, code: int, failures: list[RankFailure], log_dir: Path, launcher_lines: list[str]
) -> str:
    """The rank that most likely failed first, its error, and the tail of its log."""
    head = f"{what} workers failed (torchrun exit code {code})"
    if not failures:
        return f"{head}\n--- last launcher lines ---\n" + "\n".join(launcher_lines[-TAIL_LINES:])
    f = failures[0]
    rank = (
        f"rank {f.rank} (local rank {f.local_rank})" if f.rank is not None else f"local rank {f.local_rank}"
    )
    exitcode = f" with exit code {f.exitcode}" if f.exitcode is not None else ""
    parts = [f"{head}: {rank} died{exitcode}" + (f" ({f.signal})" if f.signal else "")]
    if f.error:
        parts.append(f.error)
    tail = rank_log_tail(log_dir, f.local_rank)
    if tail:
        parts.append(f"--- last lines of local rank {f.local_rank} ---\n" + "\n".join(tail))
    else:
        parts.append("--- last launcher lines ---\n" + "\n".join(launcher_lines[-TAIL_LINES:]))
    return "\n".join(parts)
