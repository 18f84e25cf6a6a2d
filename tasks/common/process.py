"""Child processes that die with the pipeline, and telling a live pipeline process from a dead one.

`kill -9` of `lmforge run` gives the process no chance to clean up, so its children must notice by
themselves. Linux's `PR_SET_PDEATHSIG` makes the kernel send a child a signal when its parent dies:

- processes we start (torchrun) get it in `preexec_fn` (`die_with_parent_preexec`), which also checks
  that the parent did not die between `fork` and `prctl`;
- processes that another program starts for us (torchrun's ranks: the agent starts them in sessions of
  their own) set it on themselves first thing (`die_with_parent`), which chains: pipeline -> torchrun
  -> ranks;
- processes a library starts where we cannot pass `preexec_fn` (Prefect's temporary API server) are
  handed to a small guard process (`guard`) that holds a pipe from us: when we die, the pipe closes
  and the guard kills them.

The death signal fires when the *thread* that started the child exits, so the starter must be a thread
that outlives the child (the launcher waits for torchrun in the thread that started it).

`owner()` names this process as `host:pid:start time`; a run record (an MLflow run) tagged with it can
later be told apart as left behind by a dead process (`owner_alive`), even after the pid is reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
GUARD_GRACE_S = 5.0

_libc: ctypes.CDLL | None = None


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent (a forked child must not load libraries)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[..., int] = _libc.prctl
    return prctl


def die_with_parent_preexec(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets `sig` when this process (thread) dies.

    None off Linux (no such mechanism there; the launcher's own clean-up still applies).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os._exit(1)

    return preexec


def die_with_parent(parent_cmdline: tuple[str, ...] = (), sig: int = signal.SIGKILL) -> None:
    """Make this process get `sig` when its parent dies (for processes started by another program).

    `parent_cmdline`: substrings one of which the parent's command line must contain; if none does, the
    parent already died (we were re-parented) and this process exits at once.
    """
    prctl = _prctl()
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent_cmdline and not any(p in _cmdline(os.getppid()) for p in parent_cmdline):
        os._exit(1)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---- who owns a record -----------------------------------------------------------------------------
def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, from /proc): with the pid, a unique identity."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces or ")"


def owner(pid: int | None = None) -> str:
    """`host:pid:start time` of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_time(pid) or '?'}"


def owner_alive(identity: str) -> bool | None:
    """Whether the process named by `owner()` still runs; None when it ran on another host (unknown)."""
    host, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    now = start_time(int(pid_text))
    return now is not None and (started == "?" or now == started)


# ---- the guard: children a library started -------------------------------------------------------------
_guard: subprocess.Popen[bytes] | None = None
_guard_lock = threading.Lock()
_guarded: set[str] = set()


def guard(pids: list[int]) -> None:
    """Kill these processes (SIGTERM, then SIGKILL) as soon as this process dies, however it dies.

    One guard process per pipeline process, fed over a pipe; it identifies each process by its start
    time too, so a recycled pid is never killed. Processes that ended meanwhile are simply skipped.
    """
    global _guard
    items = [f"{pid}:{t}" for pid in pids if (t := start_time(pid))]
    with _guard_lock:
        new = [i for i in items if i not in _guarded]
        if not new:
            return
        if _guard is None or _guard.poll() is not None:
            _guard = subprocess.Popen(
                [sys.executable, "-m", "tasks.common.process", str(os.getpid())],
                stdin=subprocess.PIPE,
                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                start_new_session=True,  # a Ctrl-C to our terminal must not stop the guard first
            )
        assert _guard.stdin is not None
        _guard.stdin.write("".join(f"{i}\n" for i in new).encode())
        _guard.stdin.flush()
        _guarded.update(new)


def _guard_main(parent: int) -> None:
    """The guard: read `pid:start` lines until the pipe closes (our parent is exiting), then stop them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched: list[tuple[int, str]] = []
    for line in sys.stdin:
        pid, _, started = line.strip().partition(":")
        if pid.isdigit():
            watched.append((int(pid), started))
    # EOF: the parent is exiting (the kernel closes its files before it re-parents us, so getppid() may
    # still name it here); what it asked us to watch must not outlive it
    alive = [pid for pid, started in watched if start_time(pid) == started]
    if alive:
        print(f"lmforge guard: process {parent} is gone; stopping {alive}", file=sys.stderr, flush=True)
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = GUARD_GRACE_S
    while alive and deadline > 0:
        threading.Event().wait(0.1)
        deadline -= 0.1
        alive = [pid for pid, started in watched if start_time(pid) == started]
    for pid in alive:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    _guard_main(int(sys.argv[1]))
