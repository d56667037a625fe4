"""The README's deployment commands, as written, against a real Prefect server: server, work pool, `prefect deploy
--all` (prefect.yaml), a process worker, and both `prefect deployment run` lines. They run in a copy of the
checkout (its outputs stay out of the repository) on a free port instead of 4200, with a fresh PREFECT_HOME;
nothing else in the commands is changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pyogrio
import pytest

from tests.doubles import REPO
from tests.flow_support.helpers import BIN, free_port, server_healthy, stop, wait_for

pytestmark = pytest.mark.slow


def readme_deploy_commands() -> list[str]:
    """The shell lines of the README block that follows 'As deployments', continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"As deployments[^\n]*\n+```bash\n(.*?)```", text, re.S)
    assert block, "the README's deployment block is gone"
    joined = block.group(1).replace("\\\n", " ")
    lines = [re.split(r"\s+#\s", line)[0].strip() for line in joined.splitlines()]
    return [" ".join(line.split()) for line in lines if line]


def checkout_copy(dst: Path) -> Path:
    """What `prefect deploy` and the worker need from the checkout; the code and data are links, outputs are new."""
    dst.mkdir()
    shutil.copy(REPO / "prefect.yaml", dst / "prefect.yaml")
    for name in ("flows", "fpn_geo", "configs", "models", "data"):
        (dst / name).symlink_to(REPO / name)
    return dst


def test_readme_deployment_commands_run_as_written(tmp_path):
    commands = readme_deploy_commands()
    assert commands[0] == "prefect server start" and commands[1].startswith("export PREFECT_API_URL=")
    here = checkout_copy(tmp_path / "checkout")
    port = free_port()
    api = commands[1].split("=", 1)[1].replace("4200", str(port))
    env = {
        **os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_UI_ENABLED": "false", "FPN_GEO_DASK_WORKERS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("FPN_GEO_DASK_ADDRESS", None)
    procs = []
    log = tmp_path / "services.log"
    try:
        for cmd in commands:
            if cmd.startswith("export "):
                key, value = cmd.removeprefix("export ").split("=", 1)
                env[key] = value.replace("4200", str(port))
                continue
            if cmd in ("prefect server start",) or cmd.startswith("prefect worker start"):
                with open(log, "ab") as f:
                    procs.append(subprocess.Popen(["bash", "-c", cmd], cwd=here, env=dict(env), stdout=f,
                                                  stderr=subprocess.STDOUT, start_new_session=True))
                if cmd == "prefect server start":
                    wait_for(lambda: server_healthy(api), 120, "the Prefect server")
                continue
            proc = subprocess.run(["bash", "-c", cmd], cwd=here, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            if "deployment run" in cmd:
                assert "Completed" in proc.stdout + proc.stderr, f"{cmd}\n{proc.stdout[-3000:]}"
    except BaseException:
        print(log.read_text()[-5000:] if log.exists() else "")
        raise
    finally:
        stop(procs)
    assert pyogrio.read_info(here / "out" / "kampala.gpkg", layer="buildings")["features"] > 0
    assert (here / "out" / "buildings" / "mosaic_z20_6x4_1536x1024.gpkg").is_file()
