"""Security defaults of issue 15: servers bind loopback, and secrets never reach logged parameters, printed
hints or the current folder (the infra files' command lines are checked in tests/test_infra.py)."""

from __future__ import annotations

import json

import psutil
from rich.console import Console

from conf.execution import ExecutionConfig
from conf.loader import load_config
from conf.schema import redact_uri
from flows.engine import ShardCluster
from tasks.common.tracking import Tracker

SECRET_URI = "postgresql+psycopg2://mlflow_user:s3cr3t-pw@db.internal:5432/mlflow"


def _listening(process: psutil.Process) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet") if c.status == "LISTEN"}


def test_dask_local_cluster_listens_on_loopback_only(prefect_harness):
    """The LocalCluster's dashboard used to listen on 0.0.0.0 (`dashboard_address=":0"`) while its link
    said 127.0.0.1; every socket of the scheduler and its worker processes must be on loopback."""
    me = psutil.Process()
    before = _listening(me)
    with ShardCluster(ExecutionConfig(engine="dask", dask_workers=1)) as cluster:
        assert cluster.address() is not None
        dashboard = cluster._cluster.dashboard_link  # type: ignore[union-attr]
        opened = _listening(me) - before
        children = [s for child in me.children(recursive=True) for s in _listening(child)]
    assert dashboard.startswith("http://127.0.0.1:")
    assert any(str(port) in dashboard for _, port in opened)  # the dashboard is one of them
    assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}, opened
    assert children and {ip for ip, _ in children} == {"127.0.0.1"}, children


def test_dask_dashboard_address_is_configurable():
    cfg = load_config("tiny", overrides=["execution.engine=dask", "execution.dask_dashboard_address=:8787"])
    assert cfg.execution.dask_dashboard_address == ":8787"
    assert load_config("tiny").execution.dask_dashboard_address == "127.0.0.1:0"


def test_redact_uri_masks_only_the_password():
    assert redact_uri(SECRET_URI) == "postgresql+psycopg2://mlflow_user:***@db.internal:5432/mlflow"
    assert redact_uri("https://u:p%40ss@mlflow.example/x?y=1") == "https://u:***@mlflow.example/x?y=1"
    assert redact_uri("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    for plain in ("http://127.0.0.1:5000", "sqlite:////tmp/a:b/mlflow.db", "databricks", "user@host"):
        assert redact_uri(plain) == plain


def test_tracking_uri_password_is_never_a_logged_param(mlflow_uri, tmp_path, capsys):
    """The parent run logs the whole config as params: `tracking.tracking_uri` must arrive masked, and the
    printed `mlflow ui` hint and `show-config` must not show the password either."""
    from flows.cli import _print_mlflow_ui, main
    from flows.runner import _start_parent

    cfg = load_config("tiny", overrides=[f"tracking.tracking_uri={SECRET_URI}", f"artifacts_root={tmp_path}"])
    assert cfg.tracking.tracking_uri == SECRET_URI  # the run itself still connects with the real one
    tracker = Tracker(mlflow_uri, "security-test")
    parent = _start_parent(tracker, cfg, ["collect"], tmp_path, "redaction")
    params = tracker.client.get_run(parent.run_id).data.params
    assert params["tracking.tracking_uri"] == redact_uri(SECRET_URI)
    assert not [k for k, v in params.items() if "s3cr3t-pw" in v]

    from flows.lifecycle import lifecycle  # Prefect records a flow run's parameters in its database

    recorded = json.dumps(lifecycle.serialize_parameters({"config": cfg, "targets": None}))
    assert "s3cr3t-pw" not in recorded and "mlflow_user:***@db.internal" in recorded

    console = Console(file=None, width=300, record=True)
    _print_mlflow_ui(console, SECRET_URI, "1")
    assert "s3cr3t-pw" not in console.export_text() and "--backend-store-uri" not in console.export_text()
    assert main(["show-config", "--set", f"tracking.tracking_uri={SECRET_URI}"]) == 0
    shown = capsys.readouterr().out
    assert "s3cr3t-pw" not in shown and "mlflow_user:***@db.internal" in shown


def test_a_masked_password_copied_back_is_refused():
    from conf.loader import ConfigError

    try:
        load_config("tiny", overrides=[f"tracking.tracking_uri={redact_uri(SECRET_URI)}"])
    except ConfigError as e:
        assert "tracking.tracking_uri" in str(e) and "MLFLOW_TRACKING_URI" in str(e)
    else:
        raise AssertionError("a URI with a masked password was accepted")


def test_artifacts_of_a_database_store_stay_under_the_artifacts_root(mlflow_uri, tmp_path, monkeypatch):
    """With a database tracking URI (e.g. $MLFLOW_TRACKING_URI), MLflow used to put artifacts in ./mlruns
    of whatever folder the pipeline ran from."""
    cwd, root = tmp_path / "cwd", tmp_path / "artifacts"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracker = Tracker.for_pipeline(root, mlflow_uri, "artifacts-test")
    run = tracker.start_pipeline("r", params={}, tags={})
    run.log_text("hello", "note.txt")
    assert (root / "mlruns").is_dir()
    assert [p.name for p in (root / "mlruns").rglob("note.txt")] == ["note.txt"]
    assert not (cwd / "mlruns").exists()
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location == (root / "mlruns").as_uri()
