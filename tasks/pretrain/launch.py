"""Start this node's pretraining ranks: the run spec they read, their torchrun command, and the errors.

Node 0's stage (`tasks/pretrain/stage.py`) and a joining node (`tasks/pretrain/join.py`) start their
ranks the same way, through the shared torchrun launcher (`tasks/common/launch.py`); what is particular
to pretraining is here: a rank that stopped on a non-finite loss is a permanent error, and a failure
message says from which checkpoint a re-run resumes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from conf.pretrain import PretrainConfig
from tasks.common import launch
from tasks.common.artifacts import atomic_write_text
from tasks.common.launch import LaunchError, Rendezvous
from tasks.common.stage import PermanentStageError

log = logging.getLogger("lmforge.pretrain")
SPEC_FILE = "run_spec.json"
TRAIN_MODULE = "tasks.pretrain.train"


class PretrainError(LaunchError):
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


def threads_per_proc(cfg: PretrainConfig) -> int:
    return cfg.threads_per_proc or max(1, (os.cpu_count() or 1) // cfg.nproc_per_node)


def rendezvous_of(cfg: PretrainConfig) -> Rendezvous | None:
    """None for a single node without an endpoint (torchrun picks a free local port)."""
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        return None
    assert cfg.rdzv_endpoint  # the config requires it when nnodes > 1
    return Rendezvous(cfg.rdzv_endpoint, cfg.nnodes, cfg.rdzv_backend, cfg.node_rank, cfg.rdzv_id)


def torchrun_command(cfg: PretrainConfig, spec: Path, out: Path, log_dir: Path) -> list[str]:
    """`python -m torch.distributed.run ... -m tasks.pretrain.train` for this node."""
    args = [f"--spec={spec}", f"--out={out}"]
    return launch.torchrun_command(TRAIN_MODULE, args, cfg.nproc_per_node, log_dir, rendezvous_of(cfg))


def worker_env(cfg: PretrainConfig, run_id: str | None, tracking_uri: str | None) -> dict[str, str]:
    return launch.worker_env(threads_per_proc(cfg), run_id, tracking_uri)


def run_ranks(cfg: PretrainConfig, spec: Path, out: Path, env: dict[str, str]) -> None:
    """Run this node's ranks to the end; raise `PretrainError` (`DivergedError` on a NaN) if one failed."""
    with tempfile.TemporaryDirectory(prefix="lmforge-torchrun-") as tmp:
        log_dir = Path(tmp)
        try:
            launch.run_torchrun(torchrun_command(cfg, spec, out, log_dir), env, log_dir, "pretrain", log)
        except LaunchError as e:
            diverged = any(f.exception_type == "NonFiniteLossError" for f in e.failures)
            message = "\n".join(filter(None, [str(e), resume_hint(out)]))
            raise (DivergedError if diverged else PretrainError)(message, e.failures, e.returncode) from None


def resume_hint(out: Path) -> str | None:
    """Where a re-run of the stage resumes, when a checkpoint was written."""
    from tasks.pretrain.checkpoint import CHECKPOINT_DIR, latest_checkpoint  # (imports torch)

    last = latest_checkpoint(out / CHECKPOINT_DIR)
    if last is None:
        return None
    return f"checkpoint {last[1]} is kept: re-running the stage resumes from step {last[0]}"
