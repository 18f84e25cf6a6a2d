"""Chaos on the whole pipeline (issue 15): `lmforge run --preset smoke` SIGKILLed at seeded random points
(in a data stage, in pretraining, in PPO) and rerun each time must end with stage folders byte-identical
to an uninterrupted run's in another root, no process left over and no MLflow run left RUNNING; two
pipelines started at once on a fresh root (and a fresh Prefect home) must both succeed; a copied root is
reused as is.

Real processes throughout (the CLI, Prefect's temporary server, torchrun and its ranks, MLflow on SQLite).
Each pipeline run takes minutes on two cores: `make test-slow`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.stages import STAGES
from tasks.common.artifacts import MANIFEST_NAME, read_manifest, sha256_tree
from tests.test_reliability import tagged_pids, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEED = 15
RUN_TIMEOUT_S = 1200
DATA_STAGES = ("collect", "filter", "dedup", "scrub", "align_data", "tokenizer")


def start_pipeline(root: Path, home: Path, token: str, log: Path) -> subprocess.Popen[bytes]:
    """`lmforge run --preset smoke` into `root`, as a user would start it, tagged with `token`."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "LMFORGE_TEST_TOKEN": token,
        "PYTHONPATH": str(REPO),
        # a fresh Prefect home is migrated on the first start: minutes on a busy 2-core machine
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
    }
    env.pop("PREFECT_API_URL", None)  # the CLI's own temporary server, not the test session's
    cmd = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--set", f"artifacts_root={root}"]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], log: Path) -> None:
    code = proc.wait(timeout=RUN_TIMEOUT_S)
    assert code == 0, f"pipeline failed ({code}):\n{log.read_text(errors='replace')[-4000:]}"


def stage_folders(root: Path) -> dict[str, Path]:
    """stage -> its one finished folder under `root`."""
    found = {}
    for name in STAGES:
        done = [p.parent for p in (root / name).glob(f"*/{MANIFEST_NAME}")]
        assert len(done) == 1, f"{name}: {done}"
        found[name] = done[0]
    return found


def result_files(folder: Path) -> dict[str, str]:
    """sha256 of every file of the folder except the manifest and the stage's volatile files."""
    manifest = read_manifest(folder)
    assert manifest is not None
    skip = {MANIFEST_NAME, *manifest.volatile}
    return {name: sha for name, sha in sha256_tree(folder).items() if name not in skip}


def unfinished(root: Path, stage: str) -> Path | None:
    """The stage's folder while it is being built (it exists, without a manifest)."""
    for folder in (root / stage).glob("*") if (root / stage).is_dir() else []:
        if folder.is_dir() and not (folder / MANIFEST_NAME).exists():
            return folder
    return None


def kill_inside(
    proc: subprocess.Popen[bytes], root: Path, stage: str, delay: float, after: str | None = None
) -> bool:
    """SIGKILL the pipeline `delay` seconds into `stage` (or after a file matching `after` appears in its
    folder); True when it died with the stage unfinished."""
    while proc.poll() is None and unfinished(root, stage) is None:
        time.sleep(0.02)
    while after and proc.poll() is None and not any((unfinished(root, stage) or root).glob(after)):
        time.sleep(0.02)
    assert proc.poll() is None, f"the pipeline ended before {stage} started"
    time.sleep(delay)
    folder = unfinished(root, stage)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return folder is not None and not (folder / MANIFEST_NAME).exists()


def running_runs(root: Path) -> list[str]:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], "attributes.status = 'RUNNING'")
    return [f"{r.info.run_name} ({r.info.run_id})" for r in runs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, dict[str, str]]]:
    """An uninterrupted run: its root and each stage's result files."""
    base = tmp_path_factory.mktemp("reference")
    token = uuid.uuid4().hex
    finish(start_pipeline(base / "root", base / "prefect", token, base / "log"), base / "log")
    assert wait_until(lambda: not tagged_pids(token), timeout=30), "processes left after a clean run"
    folders = stage_folders(base / "root")
    return base / "root", {name: {"folder": f.name, **result_files(f)} for name, f in folders.items()}


def test_sigkill_anywhere_then_rerun_ends_byte_identical(tmp_path, reference):
    _, expected = reference
    rng = random.Random(SEED)
    plan = [  # (stage, seconds, after what): pretraining is killed after its first checkpoint, to resume
        (rng.choice(DATA_STAGES[:1] + DATA_STAGES[-1:]), rng.uniform(0.05, 0.6), None),
        ("pretrain", rng.uniform(0.0, 2.0), "checkpoints/step-*"),
        ("ppo", rng.uniform(0.05, 0.5), None),
    ]
    root, home, log = tmp_path / "root", tmp_path / "prefect", tmp_path / "log"
    interrupted = []
    for stage, delay, after in plan:
        token = uuid.uuid4().hex
        proc = start_pipeline(root, home, token, log)
        interrupted.append((stage, round(delay, 2), kill_inside(proc, root, stage, delay, after)))
        assert wait_until(lambda t=token: not tagged_pids(t), timeout=30), (
            f"killed in {stage}: processes left over: {tagged_pids(token)}"
        )
    assert all(hit for _, _, hit in interrupted), f"a kill missed its stage: {interrupted}"
    token = uuid.uuid4().hex
    finish(start_pipeline(root, home, token, log), log)
    assert wait_until(lambda: not tagged_pids(token), timeout=30)
    got = {name: {"folder": f.name, **result_files(f)} for name, f in stage_folders(root).items()}
    for name in STAGES:  # same stage hashes (folder names) and the same bytes, root to root
        assert got[name] == expected[name], f"stage {name} differs after {interrupted}"
    pretrain = read_manifest(stage_folders(root)["pretrain"])
    assert pretrain is not None and pretrain.extra["resumed_from_step"]  # it resumed from its checkpoint
    assert running_runs(root) == []


def test_a_copied_root_is_reused_as_is(tmp_path, reference):
    source, expected = reference
    copy = tmp_path / "copy"
    shutil.copytree(source, copy, symlinks=True)
    log = tmp_path / "log"
    finish(start_pipeline(copy, tmp_path / "prefect", uuid.uuid4().hex, log), log)
    text = log.read_text(errors="replace")
    assert "removing unfinished" not in text and "rebuilding" not in text
    got = {name: {"folder": f.name, **result_files(f)} for name, f in stage_folders(copy).items()}
    assert got == expected
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    last = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`lmforge.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert last.data.metrics["stages_ran"] == 0 and last.data.metrics["stages_cached"] == len(STAGES)


def test_two_pipelines_at_once_on_a_fresh_root(tmp_path, reference):
    _, expected = reference
    root, home = tmp_path / "root", tmp_path / "prefect"
    token = uuid.uuid4().hex
    logs = [tmp_path / "log-1", tmp_path / "log-2"]
    procs = [start_pipeline(root, home, token, log) for log in logs]
    for proc, log in zip(procs, logs, strict=True):
        finish(proc, log)
    assert wait_until(lambda: not tagged_pids(token), timeout=30)
    got = {name: {"folder": f.name, **result_files(f)} for name, f in stage_folders(root).items()}
    assert got == expected
    assert running_runs(root) == []
