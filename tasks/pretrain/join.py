"""`python -m tasks.pretrain`: start this node's ranks of a multi-node pretraining run.

Node 0 runs the pretrain stage itself; every other node joins its rendezvous with the same spec file::

    python -m tasks.pretrain --spec <stage folder>/run_spec.json --out <stage folder> --node-rank N

A node that cannot know the content-addressed stage folder (a Kubernetes pod) first waits for node 0
to announce it (`tasks/pretrain/rendezvous.py`)::

    python -m tasks.pretrain join --artifacts-root <artifacts root> --rdzv-id <rdzv_id> --node-rank N
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from conf.pretrain import PretrainConfig
from tasks.pretrain.launch import SPEC_FILE, run_ranks, worker_env, write_spec
from tasks.pretrain.rendezvous import wait_for_rendezvous

log = logging.getLogger("lmforge.pretrain")
JOIN_TIMEOUT_S = 3600.0


def join(spec_file: Path, out: Path, node_rank: int, nproc_per_node: int | None = None) -> None:
    """Start this node's ranks of the run described by node 0's `spec_file`, writing into `out`."""
    data = json.loads(Path(spec_file).read_text())
    update = {"node_rank": node_rank} | ({"nproc_per_node": nproc_per_node} if nproc_per_node else {})
    cfg = PretrainConfig.model_validate({**data["config"], **update})
    with tempfile.TemporaryDirectory(prefix="lmforge-join-") as tmp:
        spec = write_spec(cfg, Path(data["tokens_dir"]), Path(data["tokenizer_dir"]), Path(tmp) / SPEC_FILE)
        run_ranks(cfg, spec, Path(out), worker_env(cfg, None, None))


def join_announced(
    artifacts_root: Path, rdzv_id: str, node_rank: int, nproc_per_node: int | None, timeout: float
):
    """Wait for node 0 to announce run `rdzv_id`, then join it; nothing to do if its flow ended first."""
    try:
        found = wait_for_rendezvous(artifacts_root, rdzv_id, timeout)
    except TimeoutError as e:
        sys.exit(f"error: {e}")
    if found is None:
        log.info(
            "node 0's flow for run %s ended without a pretraining run to join (the stage was cached, or "
            "the flow stopped before it): nothing to do",
            rdzv_id,
        )
        return
    log.info("joining run %s as node %d: %s", rdzv_id, node_rank, found["out"])
    join(Path(found["spec"]), Path(found["out"]), node_rank, nproc_per_node)


def _join_parser() -> argparse.ArgumentParser:
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
    return p


def _spec_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tasks.pretrain",
        description="Start this node's pretraining ranks of a multi-node run.",
    )
    p.add_argument("--spec", required=True, help="run_spec.json of the run (written by node 0's stage)")
    p.add_argument("--out", required=True, help="the stage folder (shared storage; node 0 writes into it)")
    p.add_argument("--node-rank", type=int, required=True)
    p.add_argument("--nproc-per-node", type=int, help="override the config's processes per node")
    return p


def main(argv: list[str] | None = None) -> None:
    """`--spec FILE --out DIR --node-rank N` joins a run whose stage folder is known; `join --artifacts-root
    DIR --rdzv-id ID --node-rank N` first waits for node 0 to announce it."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv[:1] == ["join"]:
        a = _join_parser().parse_args(argv[1:])
        join_announced(a.artifacts_root, a.rdzv_id, a.node_rank, a.nproc_per_node, a.timeout)
    else:
        a = _spec_parser().parse_args(argv)
        join(Path(a.spec), Path(a.out), a.node_rank, a.nproc_per_node)
