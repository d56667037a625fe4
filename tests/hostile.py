"""Helpers of the hostile-input suite (tests/test_hostile_*.py): run the CLI, and check the promise it makes on
any input: a correct result, or exactly one line on stderr and a non-zero exit; inputs and old outputs
byte-identical afterwards; no temporary files left."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from fpn_geo.cli import main
from tests.doubles import REPO

TEMP_MARK = ".fpn-geo-"


def digest(paths) -> dict[str, str]:
    """sha256 of every file under the given files and folders (device nodes and missing paths skipped)."""
    out = {}
    for p in map(Path, paths):
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def temps(*folders) -> list[str]:
    """Temporary files of ours (or of older naming schemes: hidden `.tmp`) left in the folders."""
    found = []
    for d in map(Path, folders):
        if d.is_dir():
            found += [
                p.name for p in d.iterdir() if TEMP_MARK in p.name or (p.name.startswith(".") and ".tmp" in p.name)
            ]
    return found


def run_inprocess(args: list[str], capsys) -> tuple[int, list[str]]:
    """main(args) in this process; stderr lines without the progress bar."""
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.strip() and not line.startswith("segment")]


def run_subprocess(args: list[str], timeout: float = 300, env: dict | None = None) -> tuple[int, list[str], str]:
    """`python -m fpn_geo.cli ARGS` as a user runs it: (exit code, stderr lines, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "fpn_geo.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    return proc.returncode, [line for line in proc.stderr.strip().splitlines() if line.strip()], proc.stdout


def assert_one_line_failure(code: int, err: list[str], *match: str) -> None:
    assert code != 0, err
    assert len(err) == 1, f"expected one line on stderr, got {len(err)}:\n" + "\n".join(err[-20:])
    assert err[0].startswith("fpn-geo: error:"), err
    for m in match:
        assert m in err[0], err[0]
