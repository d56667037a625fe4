"""Real processes for the flow tests: a Dask scheduler and workers from the command line, a served deployment.

Every process starts in its own session (process group) and `stop()` kills the whole group, so no server or
worker outlives a test, even when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import rasterio

from tests.doubles import KAMPALA_Z20, REPO, write_raster

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever is left of the group, children included
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(timeout=5)


def env_for(api_url: str, **extra: str) -> dict:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("FPN_GEO_DASK_ADDRESS", None)
    return {**env, **extra}


def crop(path: Path, col: int, row: int, width: int, height: int, shift: int = 0) -> Path:
    """A crop of the real Kampala z20 mosaic; `shift` adds to every pixel (a changed input)."""
    with rasterio.open(KAMPALA_Z20) as src:
        window = rasterio.windows.Window(col, row, width, height)
        data = src.read(window=window)
        transform, crs = src.window_transform(window), src.crs
    if shift:
        data = (data.astype("int16") + shift).clip(0, 255).astype("uint8")
    return write_raster(path, data, crs=crs, transform=transform)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def answers(url: str) -> bool:
    """Does `url` answer 200 within 2 s?"""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def server_healthy(api: str) -> bool:
    """Does the Prefect server at `api` (…/api) answer its health check?"""
    return answers(f"{api}/health")


def wait_for_deployment(name: str, timeout: float) -> None:
    """Wait until a served deployment `flow/deployment` is registered with the Prefect API in the environment."""
    from prefect.client.orchestration import get_client

    def deployed():
        with get_client(sync_client=True) as client:
            try:
                return client.read_deployment_by_name(name)
            except Exception:
                return None

    wait_for(deployed, timeout, "the served deployment to register", interval=0.5)
