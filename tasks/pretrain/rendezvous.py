"""The rendezvous files by which node 0 tells late-starting nodes where its run is.

The stage folder is content-addressed, so a node started before the run (a pod of a Kubernetes Job)
cannot name it. Node 0 writes `<artifacts root>/pretrain/rendezvous/<rdzv_id>.json` (`{"spec": ...,
"out": ...}`) while its torchrun runs and removes it afterwards, so no node joins a finished run.
Whatever runs node 0's flow writes `<rdzv_id>.over` beside it when that flow ends, so a joiner does not
wait for a run that will not come (e.g. the pretrain stage was cached).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.common.artifacts import atomic_write_text

log = logging.getLogger("lmforge.pretrain")
RENDEZVOUS_DIR = "rendezvous"  # under <artifacts root>/pretrain/, beside the stage folders


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


@contextlib.contextmanager
def announced(artifacts_root: Path, rdzv_id: str, spec: Path, out: Path, nnodes: int) -> Iterator[None]:
    """Announce node 0's run for as long as the block runs."""
    path = rendezvous_file(artifacts_root, rdzv_id)
    atomic_write_text(path, json.dumps({"spec": str(spec), "out": str(out)}))
    log.info(
        "pretrain: nodes 1..%d can join with `python -m tasks.pretrain join --artifacts-root %s "
        "--rdzv-id %s --node-rank N`",
        nnodes - 1,
        artifacts_root,
        rdzv_id,
    )
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # a node that starts later must not join a finished run


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
                f"node 0 did not start pretrain run {rdzv_id!r} within {timeout:g} s: no rendezvous file "
                f"{path} (is node 0's artifacts root the same shared folder, and did its flow reach the "
                "pretrain stage?)"
            )
        time.sleep(min(poll, left))
    return json.loads(path.read_text())  # written atomically: complete once it exists
