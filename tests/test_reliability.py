"""Crash safety, concurrency and the cache's single source of truth (issue 15), each fault injected for real:
processes SIGKILLed, stores opened by two processes at once, files corrupted in place, a crafted pickle
planted where Prefect used to keep its results. The whole-pipeline versions are in tests/test_chaos.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conf.loader import load_config
from flows.lifecycle import lifecycle
from flows.stages import STAGES
from tasks.common import artifacts
from tasks.common.artifacts import MANIFEST_NAME, read_manifest
from tasks.common.data import read_documents
from tasks.common.process import owner, owner_alive, start_time
from tasks.common.stage import InputChangedError, StageReport, StageSpec, run_stage
from tasks.common.tracking import OWNER_TAG, Tracker
from tests.helpers import docs, documents_stage
from tests.test_artifacts import SPEC, ToyConfig, ToyPipeline

REPO = Path(__file__).resolve().parents[1]


# ---- helpers: find the processes a test started, by a token in their environment ---------------------
def tagged_pids(token: str) -> list[int]:
    """Live processes (not zombies) whose environment holds LMFORGE_TEST_TOKEN=<token>."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"LMFORGE_TEST_TOKEN={token}".encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def spawn(code: str, token: str, **env: str) -> subprocess.Popen[str]:
    """A Python child running `code`, tagged with `token`; its stdout is a pipe the test reads."""
    full_env = {**os.environ, "LMFORGE_TEST_TOKEN": token, "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, stdout=subprocess.PIPE, text=True
    )


# ---- 1. children die with their parent -----------------------------------------------------------------
RANK_MODULE = """
import time
from tasks.common.launch import rank_dies_with_agent
rank_dies_with_agent()
print("rank up", flush=True)
time.sleep(300)
"""


def test_sigkill_of_the_pipeline_takes_torchrun_and_its_ranks_down(tmp_path):
    """`kill -9` of the process running torchrun: torchrun (PR_SET_PDEATHSIG from the launcher) and both
    ranks (which set it on themselves) must go too; before, all three ran on as orphans."""
    (tmp_path / "sleepy_rank.py").write_text(RANK_MODULE)
    token = uuid.uuid4().hex
    parent = spawn(
        f"""
        import logging, sys
        from pathlib import Path
        from tasks.common import launch
        log = logging.getLogger("t")
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        logs = Path({str(tmp_path / "logs")!r})
        cmd = launch.torchrun_command("sleepy_rank", [], 2, logs)
        env = launch.worker_env(1)
        env["PYTHONPATH"] = {str(tmp_path)!r} + ":" + env["PYTHONPATH"]
        launch.run_torchrun(cmd, env, logs, "sleepy", log)
        """,
        token,
    )
    assert parent.stdout is not None
    up = 0
    for line in parent.stdout:
        up += "rank up" in line
        if up == 2:
            break
    assert up == 2, "the ranks never started"
    family = [p for p in tagged_pids(token) if p != parent.pid]
    assert len(family) >= 3  # torchrun and two ranks
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_until(lambda: not tagged_pids(token), timeout=20), f"left over: {tagged_pids(token)}"


def spawn_guarded_sleeper(token: str) -> tuple[subprocess.Popen, int]:
    """A process that starts `sleep 300` and hands it to the guard (as the runner does with Prefect's
    server, which Prefect starts with no preexec_fn of ours); returns (process, the sleeper's pid)."""
    parent = spawn(
        """
        import subprocess, time
        from tasks.common.process import guard
        child = subprocess.Popen(["sleep", "300"])
        guard([child.pid])
        print(child.pid, flush=True)
        time.sleep(300)
        """,
        token,
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def test_guard_stops_what_a_library_started_when_we_are_killed():
    """Prefect's temporary server is started by Prefect (no preexec_fn of ours): the guard stops it."""
    token = uuid.uuid4().hex
    parent, child = spawn_guarded_sleeper(token)
    assert start_time(child) is not None
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_until(lambda: not tagged_pids(token), timeout=15), f"left over: {tagged_pids(token)}"


def test_guard_leaves_children_of_a_live_parent_alone():
    token = uuid.uuid4().hex
    parent, child = spawn_guarded_sleeper(token)
    time.sleep(1.0)
    assert start_time(child) is not None
    os.kill(child, signal.SIGKILL)
    parent.kill()
    parent.wait()
    assert wait_until(lambda: not tagged_pids(token), timeout=15)


def test_runs_left_running_by_a_dead_process_are_marked_killed(mlflow_uri):
    """Only runs whose owner is gone: a live concurrent pipeline's runs and other hosts' runs stay."""
    tracker = Tracker(mlflow_uri, f"orphans-{uuid.uuid4().hex[:8]}")
    dead = subprocess.Popen(["true"])
    dead_owner = owner(dead.pid)  # host:pid:start time while it lives
    dead.wait()
    assert owner_alive(dead_owner) is False and owner_alive(owner()) is True
    runs = {}
    for name, who in {
        "dead": dead_owner,
        "live": owner(),
        "other-host": "some-other-host:1:1",
    }.items():
        runs[name] = tracker.client.create_run(tracker.experiment_id, tags={OWNER_TAG: who}).info.run_id
    assert tracker.end_orphaned_runs() == [runs["dead"]]
    status = {n: tracker.client.get_run(r).info.status for n, r in runs.items()}
    assert status == {"dead": "KILLED", "live": "RUNNING", "other-host": "RUNNING"}
    # a pipeline's parent and stage runs carry their owner
    parent = tracker.start_pipeline("p", params={}, tags={})
    assert tracker.client.get_run(parent.run_id).data.tags[OWNER_TAG] == owner()


# ---- 2. a fresh MLflow store opened by two processes at once ----------------------------------------
def test_two_first_runs_at_once_open_a_fresh_store(tmp_path):
    """Before the lock one of them died in MLflow's SQLite migration (alembic / duplicate column)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 3.0  # both import mlflow first, then open the store at the same instant
    code = f"""
        import time
        from tasks.common.tracking import Tracker
        while time.time() < {start}:
            time.sleep(0.005)
        t = Tracker({uri!r}, "race")
        run = t.start_pipeline("p", params={{"a": 1}}, tags={{}})
        t.end(run)
        print("ok", t.experiment_id)
        """
    token = uuid.uuid4().hex
    procs = [spawn(code, token) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len({o.split()[-1] for o in outs}) == 1  # one experiment, found by both
    client = MlflowClient(uri)
    assert len(client.search_runs([outs[0].split()[-1]])) == 2


# ---- 3. the manifest, verified, is the only source of truth -----------------------------------------
def test_same_size_corruption_is_never_reused(tmp_path):
    up = documents_stage(tmp_path / "up", docs("a", "b", "c"))
    root, cfg = tmp_path / "root", ToyPipeline(ToyConfig())
    m = run_stage(SPEC, cfg, {"upstream": up}, root).manifest
    result = Path(m.path) / "result.txt"
    assert result.read_text() == "6\n"
    result.write_text("9\n")  # same size, other content
    again = run_stage(SPEC, cfg, {"upstream": up}, root)
    assert again.status == "ran" and result.read_text() == "6\n"


def test_verified_stamp_skips_rehashing_untouched_files(tmp_path, monkeypatch):
    up = documents_stage(tmp_path / "up", docs("a", "b"))
    root, cfg = tmp_path / "root", ToyPipeline(ToyConfig())
    run_stage(SPEC, cfg, {"upstream": up}, root)
    hashed: list[Path] = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p, *a: hashed.append(Path(p)) or real(p, *a))
    assert run_stage(SPEC, cfg, {"upstream": up}, root).status == "cached"
    assert hashed == []  # sizes, mtimes, ctimes and inodes as stamped: nothing re-read
    result = Path(run_stage(SPEC, cfg, {"upstream": up}, root).manifest.path) / "result.txt"
    os.utime(result)  # touched, content unchanged: hashed again, and still good
    assert run_stage(SPEC, cfg, {"upstream": up}, root).status == "cached"
    assert hashed == [result]
    hashed.clear()
    assert run_stage(SPEC, cfg, {"upstream": up}, root).status == "cached"
    assert hashed == []  # and stamped again


def test_an_input_changed_under_a_stage_stops_it(tmp_path):
    up = documents_stage(tmp_path / "up", docs("a", "b"))
    shard = next(Path(up.path).rglob("*.jsonl"))
    data = shard.read_bytes()
    shard.write_bytes(data.replace(b'"a"', b'"z"'))
    with pytest.raises(InputChangedError, match=r"input stage upstream .* changed.*content of documents"):
        run_stage(SPEC, ToyPipeline(ToyConfig()), {"upstream": up}, tmp_path / "root")


def test_scrub_output_tampered_in_place_is_rebuilt_not_waved_through(tmp_path):
    """The real scrub stage: PII planted in its finished output (same size) must not pass as cached
    (the leak gate would have judged the stale counts); the stage runs again and scrubs."""
    up = documents_stage(tmp_path / "up", docs("mail me at jane.doe@example.com please", "no pii here"))
    cfg = load_config("smoke")
    spec = STAGES["scrub"]
    root = tmp_path / "root"
    first = run_stage(spec, cfg, {spec.inputs[0]: up}, root)
    shard = next(Path(first.manifest.path, "documents").glob("shard-*"))
    text = shard.read_text()
    assert "jane.doe@example.com" not in text
    placeholder = next(w for w in text.split() if w.startswith("<") and "EMAIL" in w)
    planted = "jane@example.org"
    shard.write_text(text.replace(placeholder, planted[: len(placeholder)].ljust(len(placeholder)), 1))
    assert shard.stat().st_size == first.manifest.files[f"documents/{shard.name}"].size
    again = run_stage(spec, cfg, {spec.inputs[0]: up}, root)
    assert again.status == "ran"
    assert all("jane@" not in d.text for d in read_documents(again.manifest))


# ---- 4. reproducible content hashes; a copied root works as is --------------------------------------
def test_manifest_names_its_folder_relative_to_the_root_and_a_copied_root_is_reused(tmp_path):
    up = documents_stage(tmp_path / "up", docs("a", "b"))
    cfg = ToyPipeline(ToyConfig())
    a, b = tmp_path / "A", tmp_path / "B"
    m = run_stage(SPEC, cfg, {"upstream": up}, a).manifest
    on_disk = json.loads((Path(m.path) / MANIFEST_NAME).read_text())
    assert on_disk["path"] == f"toy/{m.stage_hash}"
    assert str(tmp_path) not in (Path(m.path) / MANIFEST_NAME).read_text()
    shutil.copytree(a, b)
    shutil.rmtree(a)
    assert read_manifest(b / "toy" / m.stage_hash).path == str(b / "toy" / m.stage_hash)
    again = run_stage(SPEC, cfg, {"upstream": up}, b)
    assert again.status == "cached" and again.manifest.content_hash == m.content_hash


def _timed_stage(cfg, inputs, out: Path, log) -> StageReport:
    """A result plus a record of this run (its wall clock), which must not key anything downstream."""
    (out / "result.txt").write_text("42\n")
    (out / "timing.json").write_text(json.dumps({"seconds": time.perf_counter(), "out": str(out)}))
    return StageReport(
        counts={"value": 42}, extra={"made": str(out / "result.txt")}, volatile=("timing.json",)
    )


def test_volatile_files_stay_out_of_the_content_hash(tmp_path):
    spec = StageSpec("toy", _timed_stage, ("upstream",))
    up = documents_stage(tmp_path / "up", docs("a"))
    cfg = ToyPipeline(ToyConfig())
    one = run_stage(spec, cfg, {"upstream": up}, tmp_path / "A").manifest
    two = run_stage(spec, cfg, {"upstream": up}, tmp_path / "B").manifest
    assert one.files["timing.json"] != two.files["timing.json"]  # listed, and verified like any file
    assert one.volatile == two.volatile == ["timing.json"]
    assert one.content_hash == two.content_hash
    assert one.extra["made"] == f"toy/{one.stage_hash}/result.txt"  # paths in the manifest: root-relative
    assert read_manifest(Path(one.path)) == one


def test_saved_adapters_name_no_absolute_path_and_sort_target_modules(tmp_path):
    """peft writes the base model's absolute path (config and README) and `target_modules` in set order."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.common.testing import tiny_lm_folder
    from tasks.common.training import lora_config, save_adapter

    base = tiny_lm_folder(tmp_path / "root" / "pretrain" / "abc" / "model")
    lora = lora_config(4, 8, 0.0, ["v_proj", "q_proj", "o_proj", "k_proj", "up_proj", "gate_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
    adapter = tmp_path / "root" / "sft" / "def" / "adapter"
    save_adapter(model, AutoTokenizer.from_pretrained(base), adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "pretrain/abc/model"
    assert config["target_modules"] == sorted(config["target_modules"]) and len(config["target_modules"]) == 6
    for path in adapter.iterdir():
        if path.suffix in (".json", ".md"):
            assert str(tmp_path) not in path.read_text(), path.name


# ---- the Prefect result store: never unpickled -----------------------------------------------------------
class _Planted:
    """A pickle that, when loaded, writes a marker file: what an attacker would put in a shared root."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_nothing_in_the_artifacts_root_is_unpickled(prefect_harness, mlflow_uri, tmp_path):
    """A crafted result record at the key the runner used to read back on a cache hit must never load;
    the runner keeps no Prefect results at all, and a rerun is cached from the verified manifest."""
    import base64
    import hashlib

    root, marker = tmp_path / "root", tmp_path / "PWNED"
    sets = [
        f"artifacts_root={root}",
        f"tracking.tracking_uri={mlflow_uri}",
        "tracking.experiment=pickle-test",
        "collect.max_docs=20",
    ]
    cfg = load_config("smoke", overrides=sets)
    first = lifecycle(cfg, ["collect"])
    assert not (root / ".prefect-results").exists()
    m = first.results["collect"].manifest
    key = f"lmforge-collect-{m.stage_hash}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
    path = root / ".prefect-results" / key  # a record as Prefect 3.8 wrote them there
    record = {
        "metadata": {
            "storage_key": str(path),
            "expiration": None,
            "serializer": {"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None},
            "prefect_version": "3.8.8",
            "storage_block_id": None,
        },
        "result": base64.encodebytes(pickle.dumps(_Planted(marker))).decode(),
    }
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    second = lifecycle(cfg, ["collect"])
    assert second.results["collect"].status == "cached"
    assert not marker.exists()
