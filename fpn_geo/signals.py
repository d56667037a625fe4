"""Signals and child processes: SIGTERM stops a run as cleanly as Ctrl-C, and children never outlive their parent.

- `terminate_as_interrupt()`: SIGTERM (sent by `timeout`, `docker stop`, Prefect cancellation) raises
  KeyboardInterrupt in the main thread, so every `finally` and `atomic_output` cleans up as on Ctrl-C.
  The CLI installs it; a library never does (signal handlers belong to the program).
- `die_with_parent()`: called first thing in a child process, asks Linux to send it SIGTERM (by default)
  when its parent dies, even by SIGKILL (prctl PR_SET_PDEATHSIG). A no-op on other systems.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: `except KeyboardInterrupt` cleans up after both."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise `Terminated` (a KeyboardInterrupt) in the main thread. Only from the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM for a few lines that must not be cut in half (e.g. two renames that belong
    together); they are raised as soon as the block ends. Main thread only; elsewhere it does nothing."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            if signal.SIGTERM in got and old[signal.SIGTERM] is _raise_terminated:
                raise Terminated(f"signal {signal.SIGTERM}")
            if signal.SIGINT in got:
                raise KeyboardInterrupt
            term = old[signal.SIGTERM]
            if callable(term):
                term(signal.SIGTERM, None)
            elif term == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux); True if it took effect.

    Call it at the start of a child process (a pool initializer, a `preexec_fn`). parent_pid: the parent's
    pid as the parent saw it (os.getpid() before starting the child); if the parent is already gone by
    the time this runs, `sig` is sent at once, as the kernel would have.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl: nobody will send it
        os.kill(os.getpid(), sig)
    return True
