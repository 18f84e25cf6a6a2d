"""System binaries that tests need (redis-server, PostgreSQL): found here, or apt-installed on Debian.

CI runs on a fresh Debian machine, usually as root: there a missing package is installed with apt-get,
so the tests that need it really run. Anywhere else (not root, no apt-get, install failed) the test
is skipped with a reason that says what to install.
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

_APT_TRIED: dict[str, str] = {}  # package -> outcome of our apt-get run (one attempt per process)


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


def _apt_install(package: str) -> str:
    """apt-get update + install `package` (as root); returns "" on success, else what went wrong."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (
        (["apt-get", "update", "-q"], 300),
        (["apt-get", "install", "-y", "-q", package], 600),
    )
    for args, timeout in steps:
        try:
            r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(args)}` timed out after {timeout} s"
        except OSError as e:
            return f"`{' '.join(args)}` could not run: {e}"
        if r.returncode != 0:
            tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
            return f"`{' '.join(args)}` exited {r.returncode}: {tail}"
    return ""


def ensure_debian_binaries(
    package: str, binaries: tuple[str, ...], extra_dirs: tuple[str, ...] = ()
) -> dict[str, str]:
    """Paths of `binaries` (name -> path), apt-installing Debian `package` first when some are missing
    and we are root with apt-get; otherwise `pytest.skip` with the reason and the command that fixes it."""

    def lookup() -> dict[str, str | None]:
        return {b: find_binary(b, extra_dirs) for b in binaries}

    found = lookup()
    if not all(found.values()) and package not in _APT_TRIED:
        if os.geteuid() != 0:
            _APT_TRIED[package] = "not root"
        elif not shutil.which("apt-get"):
            _APT_TRIED[package] = "no apt-get here"
        else:
            _APT_TRIED[package] = _apt_install(package) or "apt-get install ran but did not provide them"
        found = lookup()
    missing = [b for b, p in found.items() if not p]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed and not installable here ({_APT_TRIED[package]}); "
            f"install the Debian package: sudo apt-get install {package}"
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
    exe = ensure_debian_binaries("redis-server", ("redis-server",))["redis-server"]
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
