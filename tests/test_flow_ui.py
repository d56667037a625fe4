"""The operator sees the quicklook in the Prefect UI: a real flow run reports to a real Prefect server (UI on), and
headless Chromium (Debian's) opens the run's summary artifact; the embedded quicklook must have rendered
(an <img> from a data: JPEG with naturalWidth > 0), and a screenshot is kept beside the test's files."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.doubles import REPO
from tests.flow_support.helpers import BIN, free_port, server_healthy, stop, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1400,1800"]


def _require_chromium() -> None:
    if CHROMIUM:
        return
    msg = "BROWSER CHECK NOT RUN: no chromium; apt-get install -y chromium"
    if os.environ.get("FPN_GEO_REQUIRE_CHROMIUM"):
        pytest.fail(msg)
    pytest.skip(msg)


def _post(url: str, body: dict) -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class DevTools:
    """The smallest Chrome DevTools Protocol client: one page, commands in order."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=20)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.ws.close()


def test_summary_artifact_shows_the_quicklook_in_a_real_browser(tmp_path, checkpoint, small_scene):
    _require_chromium()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_UI_ENABLED": "true",
           "PREFECT_UI_API_URL": api, "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "FPN_GEO_DASK_WORKERS": "1"}
    env.pop("FPN_GEO_DASK_ADDRESS", None)
    env.pop("PREFECT_API_URL", None)
    procs = []
    log = tmp_path / "server.log"
    try:
        with open(log, "ab") as f:
            procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start"], env=env, stdout=f,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        wait_for(lambda: server_healthy(api), 120, "the Prefect server")
        out = tmp_path / "out" / "small.gpkg"
        run = subprocess.run(
            [sys.executable, "-m", "flows.segment", "--set", "window=256", "--set", "overlap=32", "scene",
             str(small_scene), "--checkpoint", str(checkpoint), "--out", str(out)],
            env={**env, "PREFECT_API_URL": api}, cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        arts = _post(f"{api}/artifacts/filter", {"artifacts": {"key": {"any_": ["segment-small"]}}})
        assert arts, "no summary artifact"
        art = arts[0]
        assert "data:image/jpeg;base64," in art["data"]
        b64 = art["data"].split("data:image/jpeg;base64,", 1)[1].split(")", 1)[0]
        assert len(art["data"]) < 400_000 and base64.b64decode(b64)[:2] == b"\xff\xd8"
        page = f"http://127.0.0.1:{port}/artifacts/artifact/{art['id']}"
        shot = tmp_path / "artifact.png"
        widths = _open_in_chromium(page, tmp_path / "chromium", shot)
        assert widths and all(w > 0 for w in widths), f"the quicklook did not render in {page}: naturalWidth {widths}"
        assert shot.stat().st_size > 10_000
    except BaseException:
        print(log.read_text()[-4000:] if log.exists() else "")
        raise
    finally:
        stop(procs)


def _open_in_chromium(url: str, profile: Path, screenshot: Path) -> list[int]:
    """The naturalWidth of every data:image/jpeg <img> on the page once it has rendered; saves a screenshot."""
    profile.mkdir()
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        active = profile / "DevToolsActivePort"
        wait_for(lambda: active.exists() and active.read_text().strip(), 60, "Chromium's DevTools port")
        dport = active.read_text().split()[0]
        page = next(t for t in _get(f"http://127.0.0.1:{dport}/json/list") if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        try:
            tools.call("Page.enable")
            tools.call("Page.navigate", url=url)
            widths: list[int] = []
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                widths = tools.eval(
                    "Array.from(document.images).filter(i => i.src.startsWith('data:image/jpeg'))"
                    ".filter(i => i.complete).map(i => i.naturalWidth)"
                ) or []
                if widths and all(w > 0 for w in widths):
                    break
                time.sleep(0.5)
            tools.eval("(document.querySelector('img[src^=\"data:image/jpeg\"]') || document.body).scrollIntoView()")
            time.sleep(0.5)
            png = tools.call("Page.captureScreenshot", format="png")["data"]
            screenshot.write_bytes(base64.b64decode(png))
            return widths
        finally:
            tools.close()
    finally:
        stop([proc])
