"""A flow run from the command line (`python -m flows.segment`) killed with SIGKILL or SIGTERM: its temporary
Prefect server must not stay listening, and no process it started may outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.doubles import REPO
from tests.flow_support.helpers import wait_for

pytestmark = pytest.mark.slow


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
