"""A flow run from the command line (`python -m flows.segment`) killed with SIGKILL or SIGTERM: its temporary
Prefect server must not stay listening, and no process it started may outlive it. A one-off run is quiet and ends
with its result; SIGTERM and SIGINT stop it within `docker stop`'s grace; an API that does not answer is one
line."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.doubles import REPO
from tests.flow_support.helpers import wait_for

pytestmark = pytest.mark.slow

GRACE_S = 10.0  # what `docker stop` waits between SIGTERM and SIGKILL
EXIT_AFTER_RESULT_S = 15.0  # the result is the last thing a one-off run does (it sat there while retries ran out)


def _server_child(proc: psutil.Process):
    for c in proc.children(recursive=True):
        try:
            if "uvicorn" in " ".join(c.cmdline()):
                return c
        except psutil.NoSuchProcess:
            continue
    return None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_flow_leaves_no_server_or_child_running(tmp_path, checkpoint, small_scene, sig):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "home"), "FPN_GEO_DASK_WORKERS": "1"}
    for key in ("PREFECT_API_URL", "FPN_GEO_DASK_ADDRESS"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.segment", "--set", "window=256", "--set", "overlap=32", "scene", str(small_scene),
         "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out" / "s.gpkg")],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    parent = psutil.Process(proc.pid)
    try:
        server = wait_for(lambda: _server_child(parent), 120, "the temporary Prefect server")
        time.sleep(3)  # the flow is under way: its cluster is starting or running
        children = parent.children(recursive=True)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(children, timeout=30)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert server not in alive, "the temporary Prefect server outlived its flow process"
        assert alive == [], f"processes outlived the flow: {[' '.join(p.cmdline())[:120] for p in alive]}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait()


def _flow_env(tmp_path, **extra) -> dict:
    # A busy CI host can take over the server's 90 s floor to start it (a first start migrates the database):
    # these tests are about what happens once it runs.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "home"), "FPN_GEO_DASK_WORKERS": "1",
           "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300", **extra}
    for key in ("PREFECT_API_URL", "FPN_GEO_DASK_ADDRESS"):
        if key not in extra:
            env.pop(key, None)
    return env


class Lines:
    """A child's stdout and stderr together, each line with the time it came (a reader thread)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.t0, self.lines = time.monotonic(), []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def seen(self, word: str) -> float | None:
        return next((t for t, line in self.lines if word in line), None)


def _start_flow(tmp_path, small_scene, checkpoint, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.segment", "--set", "window=256", "--set", "overlap=32", "scene", str(small_scene),
         "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out" / "s.gpkg")],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()


def test_a_one_off_flow_run_is_quiet_and_ends_with_its_result(tmp_path, checkpoint, small_scene):
    """The README's `python -m flows.segment scene ...` on a temporary server: no traceback (the telemetry
    heartbeat's "database is locked"), and the process ends right after its result, not once retries ran out with
    "Error logging to API" (the server used to stop before the flow's last logs were sent)."""
    proc = _start_flow(tmp_path, small_scene, checkpoint, _flow_env(tmp_path))
    out = Lines(proc)
    try:
        proc.wait(timeout=600)
        ended = time.monotonic()
        out.thread.join(5)
    finally:
        _stop(proc)
    text = out.text()
    assert proc.returncode == 0, text[-3000:]
    result = out.seen('"buildings":')
    assert result is not None, text[-3000:]
    for bad in ("Traceback", "database is locked", "Error logging to API", "Failed to send telemetry"):
        assert bad not in text, f"{bad!r} in the run's output:\n{text[-3000:]}"
    assert ended - result < EXIT_AFTER_RESULT_S, f"exit {ended - result:.1f} s after the result"
    assert (tmp_path / "out" / "s.gpkg").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_flow_run_stops_within_docker_stops_grace(tmp_path, checkpoint, small_scene, sig):
    """`docker stop` sends SIGTERM and waits 10 s before SIGKILL: the run, its cluster and its server must be gone
    by then (they waited while the flow's logs were retried against the stopped server), with the one
    line that says so and no output left."""
    proc = _start_flow(tmp_path, small_scene, checkpoint, _flow_env(tmp_path))
    out = Lines(proc)
    try:
        wait_for(lambda: out.seen("Dask workers") or proc.poll() is not None, 300, "the flow's cluster")
        assert proc.poll() is None, out.text()[-3000:]
        time.sleep(1)
        children = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        took = time.monotonic() - sent
        gone, alive = psutil.wait_procs(children, timeout=max(0.1, GRACE_S - took))
    finally:
        _stop(proc)
    out.thread.join(5)
    after = [line for t, line in out.lines if t >= sent]
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), "\n".join(after)
    assert took < GRACE_S, f"exit {took:.1f} s after the signal:\n" + "\n".join(after)
    assert [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert "Error logging to API" not in "\n".join(after)
    assert any("no output written" in line for line in after)
    assert not (tmp_path / "out" / "s.gpkg").exists()


def test_a_configured_api_that_does_not_answer_is_one_line(tmp_path, checkpoint, small_scene):
    """PREFECT_API_URL pointing at nothing: one line that names it, before any cluster starts (was a page with
    3 tracebacks)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = _flow_env(tmp_path, PREFECT_API_URL=url)
    proc = _start_flow(tmp_path, small_scene, checkpoint, env)
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    lines = [line for line in output.splitlines() if line.strip()]
    assert proc.returncode == 2, output
    assert len(lines) == 1 and url in lines[0] and "PREFECT_API_URL" in lines[0], output
    assert not (tmp_path / "out").exists()
