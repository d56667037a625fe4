"""A temporary Prefect server that never outlives the flow process that started it.

`python -m flows.segment` without PREFECT_API_URL makes Prefect start a temporary API server (uvicorn) in a
child process and stop it at exit. A flow process killed with SIGKILL (or SIGTERM, which skips Python's
exit handlers) left that server listening. `temporary_server()` starts Prefect's own temporary server from
the main thread, with PR_SET_PDEATHSIG set in the child (`fpn_geo.signals.die_with_parent`), so the kernel
stops it when the flow process dies however it dies; the context then points the flow at it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import types
from collections.abc import Iterator

from fpn_geo.signals import die_with_parent


def _popen_dying_with(parent_pid: int):
    def popen(*args, **kwargs):
        kwargs.setdefault("preexec_fn", lambda: die_with_parent(signal.SIGTERM, parent_pid))
        return subprocess.Popen(*args, **kwargs)

    return popen


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Yield the API URL to use: the configured one (PREFECT_API_URL) as it is, else a temporary server's.

    Call from the main thread: the kernel's parent-death signal follows the thread that started the child.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    from prefect.server.api import server as server_module

    # Prefect's SubprocessASGIServer calls subprocess.Popen through its module's `subprocess` name; give that
    # module (only) a Popen that sets the parent-death signal in the child.
    proxy = types.ModuleType("subprocess")
    proxy.__dict__.update(vars(subprocess))
    proxy.Popen = _popen_dying_with(os.getpid())  # type: ignore[attr-defined]
    server_module.subprocess = proxy
    server = server_module.SubprocessASGIServer()
    server.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        server.stop()
