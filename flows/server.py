"""A temporary Prefect server that never outlives the flow process that started it.

`python -m flows.segment` without PREFECT_API_URL makes Prefect start a temporary API server (uvicorn) in a
child process and stop it at exit. A flow process killed with SIGKILL (or SIGTERM, which skips Python's
exit handlers) left that server listening. `temporary_server()` starts Prefect's own temporary server from
the main thread, with PR_SET_PDEATHSIG set in the child (`fpn_geo.signals.die_with_parent`), so the kernel
stops it when the flow process dies however it dies; the context then points the flow at it.

A one-off run must also end quietly and at once. Before the server stops, the flow's queued logs and events are
sent to it (as `prefect.testing.utilities.prefect_test_harness` does): otherwise Prefect's exit handler retries
them against the stopped server with back-off, and the process sat long after its result, then printed
"Error logging to API: All connection attempts failed". The server runs without Prefect's telemetry heartbeat
(`PREFECT_SERVER_ANALYTICS_ENABLED`): it writes its session row into the same SQLite file while the flow's first
requests arrive (a "database is locked" traceback) and phones home from machines that often have no internet.
A configured API that does not answer is refused before the flow starts, on one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import types
from collections.abc import Iterator

from fpn_geo.errors import FpnGeoError
from fpn_geo.signals import die_with_parent

STARTUP_TIMEOUT_S = 90.0  # at least: a first start migrates a new database, past Prefect's default on a busy host
DRAIN_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 5.0


class ServerError(FpnGeoError):
    """The Prefect API cannot be reached or started."""


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
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    configured = PREFECT_API_URL.value()
    if configured:
        check_api(configured)
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
    with temporary_settings(updates={PREFECT_SERVER_ANALYTICS_ENABLED: False}):  # its environment is the server's
        try:
            server.start(timeout=max(STARTUP_TIMEOUT_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
        except RuntimeError as e:  # Prefect's message ends with the server's whole output: its first line only
            raise ServerError(f"the temporary Prefect server did not start: {str(e).splitlines()[0]}") from None
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            except BaseException:  # SIGTERM from `docker stop` leaves 10 s in all: the logs get a moment only
                drain_to_api(timeout=1.0)
                raise
            drain_to_api()
    finally:
        server.stop()


def drain_to_api(timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Send the logs and events still queued in this process to the API, waiting at most `timeout` for each."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # nothing queued, or already stopped: nothing to send
            worker.drain_all(timeout=timeout, at_exit=False)


def check_api(url: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ServerError, one line, unless the Prefect API at `url` answers its health check."""
    import httpx
    from prefect.settings import PREFECT_API_KEY

    key = PREFECT_API_KEY.value()  # Prefect Cloud: its health check wants the key
    secret = key.get_secret_value() if hasattr(key, "get_secret_value") else key
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout, headers=headers)
    except httpx.HTTPError as e:
        raise ServerError(
            f"the Prefect API at {url} (PREFECT_API_URL) does not answer ({type(e).__name__}: {e}); start that "
            "server, or unset PREFECT_API_URL to run on a temporary one"
        ) from None
    if response.status_code != 200:
        raise ServerError(
            f"the Prefect API at {url} (PREFECT_API_URL) answered its health check with HTTP {response.status_code}; "
            "check the URL (it ends in /api), or unset PREFECT_API_URL to run on a temporary one"
        )
