"""Real backing services on loopback for the integration tests: a throwaway PostgreSQL cluster
(infra/local/postgres.sh), and Prefect + MLflow servers on it (infra/local/serve.sh).

Everything lives in temp dirs, on free ports of 127.0.0.1, and is torn down at the end (also on failure).
The PostgreSQL password is generated per run and only passed through the environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.services import find_binary, require_binaries

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"
PG_TOOLS = ("initdb", "pg_ctl", "psql")
PG_BIN_DIRS = ("/usr/lib/postgresql/*/bin",)  # Debian keeps initdb and pg_ctl off PATH


def find_pg_tool(name: str) -> str | None:
    return find_binary(name, PG_BIN_DIRS)


def ensure_postgres_tools() -> None:
    """Skip (naming `make services`) unless initdb/pg_ctl/psql are installed."""
    require_binaries("postgresql", PG_TOOLS, PG_BIN_DIRS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, what: str, logs: list[Path], proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: its process exited ({proc.returncode})\n{tails(logs)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not healthy at {url} within {timeout:.0f} s\n{tails(logs)}")


def tails(logs: list[Path], n: int = 40) -> str:
    out = []
    for p in logs:
        if p.exists():
            lines = p.read_text(errors="replace").splitlines()[-n:]
            out.append(f"--- {p.name} (last {len(lines)} lines) ---\n" + "\n".join(lines))
    return "\n".join(out)


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started in its own session, everything in that session, and any descendant that
    left it (Prefect may start flow-run processes in a new session): SIGTERM, then SIGKILL."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    for child in descendants:
        try:
            child.kill()
        except psutil.Error:
            pass


@dataclass
class Services:
    """Where the running services are, and the environment that reaches them."""

    dir: Path
    prefect_api: str
    mlflow_uri: str
    env: dict[str, str]
    logs: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self, args: list[str], log_name: str, **env: str) -> subprocess.Popen:
        log = self.dir / log_name
        self.logs.append(log)
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**self.env, **env},
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        r = subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, (
            f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
        return r


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    """PostgreSQL, then Prefect and MLflow servers backed by it; all stopped and deleted afterwards."""
    pytest.importorskip("asyncpg", reason="needs the `integration` extra: make test-integration")
    pytest.importorskip("psycopg2", reason="needs the `integration` extra: make test-integration")
    ensure_postgres_tools()
    base = Path(tempfile.mkdtemp(prefix="lmforge-it-"))
    base.chmod(0o711)  # the postgres user must reach base/pg
    pg_dir = base / "pg"
    pg_port, prefect_port, mlflow_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        LMFORGE_PG_PASSWORD=os.urandom(18).hex(),
        PREFECT_HOME=str(base / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=f"http://{HOST}:{prefect_port}/api",
        PREFECT_WORKER_QUERY_SECONDS="2",
        MLFLOW_TRACKING_URI=f"http://{HOST}:{mlflow_port}",
        LMFORGE_ARTIFACTS=str(base / "artifacts"),
        LMFORGE_PROJECT_DIR=str(ROOT),
    )
    svc = Services(base, env["PREFECT_API_URL"], env["MLFLOW_TRACKING_URI"], env)
    pg_started = False
    try:
        t0 = time.perf_counter()
        svc.run(["infra/local/postgres.sh", "start", str(pg_dir), str(pg_port)], timeout=120)
        pg_started = True
        for line in (pg_dir / "env.sh").read_text().splitlines():  # the generated connection URLs
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        del env["LMFORGE_PG_PASSWORD"]
        print(f"\npostgres up in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        serve = svc.start(
            ["infra/local/serve.sh"],
            "serve.log",
            BIN=str(BIN),
            HOST=HOST,
            PREFECT_PORT=str(prefect_port),
            MLFLOW_PORT=str(mlflow_port),
            STATE_DIR=str(base / "servers"),
        )
        logs = [base / "serve.log", base / "servers" / "prefect.log", base / "servers" / "mlflow.log"]
        svc.logs += logs[1:]
        wait_http(f"{svc.prefect_api}/health", 180, "Prefect server", logs, serve)
        wait_http(f"{svc.mlflow_uri}/health", 180, "MLflow server", logs, serve)
        print(f"prefect + mlflow servers up in {time.perf_counter() - t0:.1f} s")
        yield svc
    finally:
        for proc in reversed(svc.procs):
            stop_group(proc)
        if pg_started:
            subprocess.run(
                ["infra/local/postgres.sh", "stop", str(pg_dir)], cwd=ROOT, capture_output=True, timeout=90
            )
        shutil.rmtree(base, ignore_errors=True)
