"""The database password of the real stack (infra/local/postgres.sh + serve.sh) is on no process's command
line: `ps` shows command lines to every user of the machine (issue 15). The servers get their URLs from
the environment, and they must be up and using PostgreSQL for the check to mean anything."""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlsplit

import psutil
import pytest

from tests.integration.conftest import Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _command_lines() -> dict[int, str]:
    lines = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        lines[proc.info["pid"]] = " ".join(proc.info["cmdline"] or [])
    return lines


def test_database_password_is_on_no_command_line(services: Services):
    password = urlsplit(services.env["MLFLOW_BACKEND_STORE_URI"]).password
    prefect_password = urlsplit(services.env["PREFECT_API_DATABASE_CONNECTION_URL"]).password
    assert password and prefect_password and len(password) >= 16
    # the servers are up, on PostgreSQL (an experiment created through MLflow's API lands in it)
    req = urllib.request.Request(
        f"{services.mlflow_uri}/api/2.0/mlflow/experiments/create",
        data=json.dumps({"name": "argv-check"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert json.load(resp)["experiment_id"]
    server_pids = {
        p.pid for proc in services.procs for p in psutil.Process(proc.pid).children(recursive=True)
    }
    lines = _command_lines()
    assert any("mlflow" in lines.get(pid, "") for pid in server_pids)  # the check sees the servers
    leaks = {pid: line for pid, line in lines.items() if password in line or prefect_password in line}
    assert not leaks, leaks
