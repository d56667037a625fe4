"""The package installed for real (a wheel, not editable) into a fresh venv, run from a folder outside the
repository: `fpn-geo segment` gets the documented defaults (SegmentConfig's fields) without --config, and a
config file's overrides with it; nothing reaches back into the source tree."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyogrio
import pytest

from fpn_geo.config import SegmentConfig, output_parameters
from tests.doubles import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the fpn-geo wheel; its dependencies come from this interpreter's site-packages (a .pth)."""
    tmp = tmp_path_factory.mktemp("installed")
    wheel_dir = tmp / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; "
                                  "print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "zz_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    wheel = next(wheel_dir.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(purelib), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return venv


def run_installed(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    code = "import sys; from fpn_geo.cli import main; sys.exit(main())"
    return subprocess.run([str(venv / "bin" / "python"), "-c", code, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def parameters(gpkg: Path) -> dict:
    return json.loads(pyogrio.read_dataframe(gpkg, layer="provenance").iloc[0]["parameters"])


def test_installed_package_gets_the_documented_defaults_outside_the_repository(
    installed, tmp_path, small_scene, checkpoint
):
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import fpn_geo; print(fpn_geo.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert str(installed) in where.stdout, where.stdout + where.stderr  # the wheel, not the checkout
    proc = run_installed(
        installed, tmp_path, "segment", str(small_scene), "--model", str(checkpoint), "--out", "a.gpkg", "-q"
    )
    assert proc.returncode == 0, proc.stderr
    got = parameters(tmp_path / "a.gpkg")
    want = output_parameters(SegmentConfig())
    want["window"] = 320  # the default 512, clamped to this 300x200 scene
    assert {k: got[k] for k in want} == want

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "my.yaml").write_text("threshold: 0.4\nwindow: 256\noverlap: 32\n")  # overrides only
    proc = run_installed(installed, tmp_path, "segment", str(small_scene), "--model", str(checkpoint),
                         "--out", "b.gpkg", "--config", "cfg/my.yaml", "-q")
    assert proc.returncode == 0, proc.stderr
    got = parameters(tmp_path / "b.gpkg")
    assert (got["threshold"], got["window"], got["overlap"]) == (0.4, 256, 32)
    assert got["min_area_m2"] == SegmentConfig().min_area_m2
