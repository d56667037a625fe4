"""Signals to `fpn-geo segment` at each stage: SIGINT and SIGTERM (Ctrl-C, `timeout`, `docker stop`, Prefect
cancellation) stop it with one line and no leftovers, the old outputs intact and no child process left; after
SIGKILL the next run sweeps what the killed one left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fpn_geo.signals import die_with_parent
from tests.doubles import KAMPALA_Z20, REPO
from tests.hostile import digest, temps

pytestmark = pytest.mark.slow


def start_cli(out: Path, ckpt: Path, scratch: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "fpn_geo.cli", "segment", str(KAMPALA_Z20), "--model", str(ckpt), "--out", str(out),
            "--window", "256", "--overlap", "32", "-q"]
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored: give the run
    # the default, as a terminal's Ctrl-C finds it, however pytest itself was started.
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_until(pred, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stage_started(stage: str, out_dir: Path, scratch: Path):
    if stage == "inference":  # the scratch folder of the stitched raster exists while windows are predicted
        return lambda: any(p.name.startswith("fpn-geo-") for p in scratch.iterdir())
    if stage == "cog":  # the probability COG is being copied out of scratch
        return lambda: any(".b.probability.tif.fpn-geo-" in p.name for p in out_dir.iterdir())
    return lambda: any(".b.gpkg.fpn-geo-" in p.name for p in out_dir.iterdir())  # the GeoPackage is being written


@pytest.fixture
def old_outputs(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "b.gpkg").write_bytes(b"the old, good GeoPackage")
    (out_dir / "b.probability.tif").write_bytes(b"the old, good COG")
    return out_dir


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", ["inference", "write", "cog"])
def test_signal_leaves_nothing_and_keeps_the_old_output(tmp_path, checkpoint, old_outputs, stage, sig):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    before = digest([old_outputs, KAMPALA_Z20])
    proc = start_cli(old_outputs / "b.gpkg", checkpoint, scratch)
    try:
        if not wait_until(stage_started(stage, old_outputs, scratch), proc):
            if stage == "cog" and proc.poll() == 0:
                pytest.skip("the COG write was over before it was seen")
            pytest.fail(
                f"stage {stage} never seen: rc {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
            )
        if stage == "inference":
            time.sleep(0.5)
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if proc.returncode == 0:  # the signal came as the last commit finished: a complete new output is as good
        pytest.skip("the run finished before the signal")
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert len(lines) == 1 and ("interrupted" if sig == signal.SIGINT else "terminated") in lines[0], err
    assert temps(old_outputs) == [], "temporary files left beside the output"
    assert list(scratch.iterdir()) == [], "scratch left in the temp folder"
    assert digest([old_outputs, KAMPALA_Z20]) == before
    time.sleep(0.5)
    assert not group_alive(proc.pid), "a child process outlived the run"


@pytest.mark.parametrize("stage", ["inference", "cog"])
def test_after_sigkill_the_next_run_sweeps_the_leftovers(tmp_path, checkpoint, old_outputs, stage):
    """The next run, started at once (what the killed run left is seconds old), removes its scratch folder and,
    killed while writing the COG, its temporary COG and overview: no live run holds those folders' lock
    (outputs.FolderClaim). The GeoPackage's temp appears only when its first buildings are flushed."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = start_cli(old_outputs / "b.gpkg", checkpoint, scratch)
    try:
        seen = wait_until(stage_started(stage, old_outputs, scratch), proc, timeout=600)  # a loaded host is slow
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    if not seen and stage == "cog":
        pytest.skip("the COG write was over before it was seen")
    assert seen, proc.stderr.read()
    assert list(scratch.iterdir()), "SIGKILL cannot be cleaned up after by the run itself"
    if stage == "cog":
        assert [p for p in old_outputs.iterdir() if ".b.probability.tif.fpn-geo-" in p.name]
    proc = start_cli(old_outputs / "b.gpkg", checkpoint, scratch)
    proc.communicate(timeout=600)
    assert proc.returncode == 0
    assert temps(old_outputs) == []
    assert list(scratch.iterdir()) == []


def test_die_with_parent_stops_a_child_when_its_parent_is_killed(tmp_path):
    """A parent that starts a child with die_with_parent, then is SIGKILLed: the child goes too."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import os, subprocess, sys, time\n"
            "from fpn_geo.signals import die_with_parent\n"
            "me = os.getpid()\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
            "preexec_fn=lambda: die_with_parent(parent_pid=me))\n"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
            "time.sleep(120)\n"
        )],
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
                with open(f"/proc/{child}/stat") as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        break  # a zombie waiting for init: dead
            except (ProcessLookupError, FileNotFoundError):
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the child outlived its SIGKILLed parent")
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert die_with_parent.__doc__
