"""System binaries that tests need (redis-server, PostgreSQL): found here, or the test is skipped.

Tests never install anything: `make services` does (CI runs it before `make test`), with apt-get as
root on Debian, or prints the command to run. A test whose binaries are missing is skipped with a
reason that names `make services`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _version_key(path: str) -> list[tuple[int, int | str]]:
    """Sort key that orders /usr/lib/postgresql/9.6 before .../17 (numbers compared as numbers)."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", path)]


def find_binary(name: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    """`name` on PATH, else in `extra_dirs` (glob patterns such as "/usr/lib/postgresql/*/bin"; the
    highest version wins), else in /usr/sbin and /sbin (not on a non-root user's PATH on Debian)."""
    found = shutil.which(name)
    if found:
        return found
    for pattern in extra_dirs:
        hits = sorted(
            (p for p in glob.glob(os.path.join(pattern, name)) if os.access(p, os.X_OK)), key=_version_key
        )
        if hits:
            return hits[-1]
    for d in ("/usr/sbin", "/sbin"):
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def require_binaries(
    package: str, binaries: tuple[str, ...], extra_dirs: tuple[str, ...] = ()
) -> dict[str, str]:
    """Paths of `binaries` (name -> path); `pytest.skip` naming `make services` when some are missing.

    `package` is the Debian package that provides them, shown in the skip reason.
    """
    found = {b: find_binary(b, extra_dirs) for b in binaries}
    missing = [b for b, p in found.items() if not p]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: run `make services` (as root it apt-installs the Debian "
            f"package {package}; otherwise it prints the command, e.g. sudo apt-get install {package})"
        )
    return {b: p for b, p in found.items() if p}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(folder: Path, password: str | None = None) -> Iterator[int]:
    """A throwaway redis-server on a free loopback port, no persistence; its port. With `password`, the
    server requires it (given on stdin, as infra/ does). Stopped afterwards."""
    exe = require_binaries("redis-server", ("redis-server",))["redis-server"]
    redis = pytest.importorskip("redis", reason="needs the redis client: pip install -e '.[dev]'")
    port = free_port()
    log = Path(folder) / f"redis-{port}.log"
    config = f"requirepass {password}\n" if password else ""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "-", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=folder, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(config.encode())
    proc.stdin.close()
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"redis-server did not come up on port {port}:\n{log.read_text(errors='replace')}"
                    )
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
