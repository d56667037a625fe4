"""Outputs aimed at inputs, at each other, at device nodes and folders, on a full disk: refused on one line before
any work (or written completely), the input and old outputs byte-identical, no temporary file left."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pyogrio
import pytest
import rasterio

from fpn_geo.errors import OutputError
from fpn_geo.outputs import (
    FolderClaim,
    PendingOutput,
    atomic_output,
    check_output_paths,
    scratch_space,
    sweep_output_folders,
    sweep_stale_temps,
    temp_path,
    verify_raster,
)
from tests.hostile import assert_one_line_failure, digest, run_inprocess, run_subprocess, temps

ROOT = os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A small tmpfs at `path` (root only): a disk that fills up, or one that cannot be written."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def seg(scene, ckpt, out, *extra):
    return ["segment", str(scene), "--model", str(ckpt), "--out", str(out), "-q", *extra]


def test_out_equal_to_the_scene_is_refused(small_scene, checkpoint, capsys):
    before = digest([small_scene])
    code, err = run_inprocess(seg(small_scene, checkpoint, small_scene), capsys)
    assert_one_line_failure(code, err, "--out", "is the input SCENE")
    assert digest([small_scene]) == before and temps(small_scene.parent) == []


def test_out_through_a_symlink_to_the_scene_is_refused(small_scene, checkpoint, tmp_path, capsys):
    link = tmp_path / "link.gpkg"
    link.symlink_to(small_scene)
    before = digest([small_scene])
    code, err = run_inprocess(seg(small_scene, checkpoint, link), capsys)
    assert_one_line_failure(code, err, "--out", "is the input SCENE")
    assert digest([small_scene]) == before and link.is_symlink()


def test_probability_equal_to_the_scene_or_to_out_is_refused(small_scene, checkpoint, tmp_path, capsys):
    before = digest([small_scene])
    code, err = run_inprocess(
        seg(small_scene, checkpoint, tmp_path / "b.gpkg", "--probability", str(small_scene)), capsys
    )
    assert_one_line_failure(code, err, "--probability", "is the input SCENE")
    code, err = run_inprocess(
        seg(small_scene, checkpoint, tmp_path / "b.gpkg", "--probability", str(tmp_path / "b.gpkg")), capsys
    )
    assert_one_line_failure(code, err, "--probability")
    assert digest([small_scene]) == before and not (tmp_path / "b.gpkg").exists()


def test_out_equal_to_the_checkpoint_is_refused(small_scene, tmp_path, capsys):
    from tests.doubles import make_checkpoint

    # not the shared one: a broken build overwrites it
    checkpoint = make_checkpoint(tmp_path / "own" / "r18.safetensors")
    before = digest([checkpoint, checkpoint.with_suffix(".json")])
    code, err = run_inprocess(
        seg(small_scene, checkpoint, checkpoint.with_suffix(".json"), "--probability", str(checkpoint)), capsys
    )
    assert code != 0 and len(err) == 1
    assert digest([checkpoint, checkpoint.with_suffix(".json")]) == before


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_out_on_a_device_node_is_refused(small_scene, checkpoint, tmp_path, capsys):
    """A private copy of /dev/null, never the real one: on a build with this bug, the real one is replaced by a
    GeoPackage for the whole machine (it happened while this suite was run against the old code)."""
    node = tmp_path / "b.gpkg"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    code, err = run_inprocess(seg(small_scene, checkpoint, node), capsys)
    assert_one_line_failure(code, err, "not a regular file")
    assert stat.S_ISCHR(os.stat(node).st_mode)
    fifo = tmp_path / "p.tif"
    os.mkfifo(fifo)
    code, err = run_inprocess(seg(small_scene, checkpoint, tmp_path / "c.gpkg", "--probability", str(fifo)), capsys)
    assert_one_line_failure(code, err, "--probability", "not a regular file")


def test_out_an_existing_folder_is_refused(small_scene, checkpoint, tmp_path, capsys):
    folder = tmp_path / "results.gpkg"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, err = run_inprocess(seg(small_scene, checkpoint, folder), capsys)
    assert_one_line_failure(code, err, "--out", "existing folder")
    assert (folder / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["b.shp", "b.geojson", "b.GeoJSON", "b.tif"])
def test_a_geopackage_under_another_formats_name_is_refused(small_scene, checkpoint, tmp_path, capsys, name):
    code, err = run_inprocess(seg(small_scene, checkpoint, tmp_path / name), capsys)
    assert_one_line_failure(code, err, "--out", ".gpkg")
    assert list(tmp_path.iterdir()) == [small_scene] or not (tmp_path / name).exists()


def test_probability_in_a_read_only_folder_fails_before_any_work(small_scene, checkpoint, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        t0 = time.monotonic()
        code, err = run_inprocess(
            seg(small_scene, checkpoint, tmp_path / "b.gpkg", "--probability", str(ro / "p.tif")), capsys
        )
        assert_one_line_failure(code, err, "--probability", "cannot be written")
        assert time.monotonic() - t0 < 5  # before the model loads
    assert not (tmp_path / "b.gpkg").exists()


def test_probability_in_a_missing_folder_is_made_first(small_scene, checkpoint, tmp_path, capsys):
    prob = tmp_path / "new" / "deeper" / "p.tif"
    code, err = run_inprocess(seg(small_scene, checkpoint, tmp_path / "b.gpkg", "--probability", str(prob)), capsys)
    assert code == 0, err
    with rasterio.open(prob) as src:
        assert src.count == 2


def test_scratch_too_small_fails_before_any_work(small_scene, checkpoint, tmp_path, capsys):
    with tmpfs(tmp_path / "scratch", "16k") as scratch:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"scratch_dir: {scratch}\n")
        code, err = run_inprocess(seg(small_scene, checkpoint, tmp_path / "b.gpkg", "--config", str(cfg)), capsys)
        assert_one_line_failure(code, err, "scratch_dir")


DISK_SIZES = [f"{k}k" for k in range(20, 320, 18)] + ["4m"]  # every stage: GeoPackage, COG, its style, commit


@pytest.mark.parametrize("size", DISK_SIZES)
def test_disk_full_sweep(small_scene, checkpoint, tmp_path, capsys, size):
    """The output disk fills up at every stage of the write: either complete, valid outputs, or one line, the
    old outputs untouched and no temporary file left."""
    with tmpfs(tmp_path / "disk", size) as disk:
        old_gpkg, old_prob = disk / "b.gpkg", disk / "b.probability.tif"
        old_gpkg.write_bytes(b"old gpkg " * 100)
        old_prob.write_bytes(b"old tif " * 100)
        before = digest([small_scene, old_gpkg, old_prob])
        code, err = run_inprocess(seg(small_scene, checkpoint, old_gpkg), capsys)
        left = temps(disk)
        if code == 0:
            assert pyogrio.read_info(old_gpkg, layer="buildings")["features"] >= 0
            verify_raster(old_prob, count=2)
        else:
            assert_one_line_failure(code, err)
            after = digest([small_scene, old_gpkg, old_prob])
            assert after == before
        assert left == [], f"left behind on a full disk: {left}"


def test_a_disk_that_fills_during_the_cog_says_so_on_one_line(small_scene, checkpoint, tmp_path, capsys):
    """Issue 20: with the disk filling during the probability COG, stderr got libtiff's `_tiffWriteProc: No space
    left on device` (from GDAL's threads too), a GDAL warning and an error naming a temporary file. Each run is a
    process of its own, so whatever the C libraries print to file descriptor 2 is seen. Levels from "the COG does
    not fit" (it is written first) to "everything fits": every failing level prints one line that names the
    folder, says the disk is full and gives an estimate of the space needed; old outputs intact; no temp files."""
    code, err = run_inprocess(seg(small_scene, checkpoint, tmp_path / "free" / "b.gpkg"), capsys)
    assert code == 0, err
    cog = (tmp_path / "free" / "b.probability.tif").stat().st_size
    gpkg = (tmp_path / "free" / "b.gpkg").stat().st_size
    old_pages = 8  # kB: the two old outputs below, a page each
    sizes = sorted({old_pages + round(cog / 1024 * f) for f in (0.2, 0.5, 0.8)}
                   | {old_pages + round((cog + gpkg * f) / 1024) + 8 for f in (0.5, 1.5, 3)})
    failed = []
    for size in sizes:
        with tmpfs(tmp_path / f"disk{size}", f"{size}k") as disk:
            old_gpkg, old_prob = disk / "b.gpkg", disk / "b.probability.tif"
            old_gpkg.write_bytes(b"old gpkg " * 100)
            old_prob.write_bytes(b"old tif " * 100)
            before = digest([old_gpkg, old_prob])
            code, err, _ = run_subprocess(seg(small_scene, checkpoint, old_gpkg))
            if code == 0:
                verify_raster(old_prob, count=2)
                continue
            failed.append(size)
            assert_one_line_failure(code, err, "the disk is full", str(disk), "an estimate")
            assert digest([old_gpkg, old_prob]) == before and temps(disk) == []
    assert failed[:3] == sizes[:3], f"the COG did not fill the disk at {sizes[:3]} kB: failed at {failed}"


def test_atomic_output_cleans_up_on_interrupt_and_keeps_the_old_file(tmp_path):
    final = tmp_path / "r.json"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output(final) as tmp:
        tmp.write_text("half")
        Path(f"{tmp}-journal").write_text("j")
        raise KeyboardInterrupt
    assert final.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_atomic_output_refuses_an_incomplete_raster(tmp_path, small_scene):
    final = tmp_path / "p.tif"
    final.write_bytes(b"old")
    data = small_scene.read_bytes()
    with (
        pytest.raises(OutputError, match="incomplete|truncated|not"),
        atomic_output(final, verify=verify_raster) as tmp,
    ):
        tmp.write_bytes(data[: len(data) * 2 // 3])
    assert final.read_bytes() == b"old" and temps(tmp_path) == []


def test_check_output_paths_unit(tmp_path):
    scene = tmp_path / "s.tif"
    scene.write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input"):
        check_output_paths({"SCENE": scene}, {"--out": tmp_path / "." / "s.tif"})
    with pytest.raises(OutputError, match="same path"):
        check_output_paths({}, {"--out": tmp_path / "a.gpkg", "--probability": tmp_path / "sub" / ".." / "a.gpkg"})
    check_output_paths({"SCENE": "/vsis3/bucket/s.tif"}, {"--out": tmp_path / "a.gpkg"})


def test_stale_temps_of_killed_runs_are_swept_and_nothing_else(tmp_path):
    dead = tmp_path / ".b.gpkg.fpn-geo-999999-deadbeef.tmp.gpkg"
    dead_journal = tmp_path / ".b.gpkg.fpn-geo-999999-deadbeef.tmp.gpkg-journal"
    dead_ovr = tmp_path / ".b.probability.tif.fpn-geo-999999-deadbeef.tmp.tif.ovr.tmp"  # GDAL's, while a COG is built
    live = temp_path(tmp_path / "c.gpkg")  # this process: alive
    young_dead = tmp_path / ".d.gpkg.fpn-geo-999998-0badf00d.tmp.gpkg"
    foreign = tmp_path / ".b.gpkg.tmp"
    for p in (dead, dead_journal, dead_ovr, live, young_dead, foreign):
        p.write_text("x")
    old = time.time() - 3600
    for p in (dead, dead_journal, dead_ovr, live, foreign):
        os.utime(p, (old, old))
    removed = sweep_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, dead_journal.name, dead_ovr.name])
    assert live.exists() and young_dead.exists() and foreign.exists()


def test_scratch_space_is_private_removed_and_swept(tmp_path):
    dead = tmp_path / "fpn-geo-999999-abc"
    dead.mkdir()
    (dead / "probability.tif").write_bytes(b"x" * 100)
    old = time.time() - 3600
    os.utime(dead, (old, old))
    with pytest.raises(KeyboardInterrupt), scratch_space(tmp_path) as scratch:
        assert scratch.name.startswith(f"fpn-geo-{os.getpid()}-") and not dead.exists()
        (scratch / "probability.tif").write_bytes(b"y")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_leaves_no_folders_it_would_have_made(small_scene, checkpoint, tmp_path, capsys):
    """A missing scene with --out a/b/c/k.gpkg: one line, and no empty a/b/c left behind."""
    out = tmp_path / "a" / "b" / "c" / "k.gpkg"
    code, err = run_inprocess(seg(tmp_path / "missing.tif", checkpoint, out), capsys)
    assert_one_line_failure(code, err, "missing.tif")
    assert not (tmp_path / "a").exists()


def test_an_output_in_a_folder_that_cannot_be_made_is_refused(small_scene, checkpoint, tmp_path, capsys):
    (tmp_path / "a").write_text("a file, not a folder")
    code, err = run_inprocess(seg(small_scene, checkpoint, tmp_path / "a" / "b" / "k.gpkg"), capsys)
    assert_one_line_failure(code, err, "--out", "not a folder")
    assert (tmp_path / "a").read_text() == "a file, not a folder"


def test_a_discarded_output_removes_the_folders_it_made_and_only_those(tmp_path):
    (tmp_path / "a").mkdir()
    out = PendingOutput(tmp_path / "a" / "b" / "c" / "k.gpkg")
    out.tmp.write_bytes(b"half")
    assert (tmp_path / "a" / "b" / "c").is_dir()
    out.discard()
    assert (tmp_path / "a").is_dir() and list((tmp_path / "a").iterdir()) == []
    kept = PendingOutput(tmp_path / "n" / "k.gpkg")
    (tmp_path / "n" / "other.txt").write_text("someone else's")  # a folder that is no longer empty stays
    kept.discard()
    assert (tmp_path / "n" / "other.txt").exists()


def _young_dead_temps(folder: Path) -> list[Path]:
    """What a SIGKILLed run leaves seconds before the next run: a GeoPackage, a COG and its overview, all young."""
    names = [".b.gpkg.fpn-geo-999999-deadbeef.tmp.gpkg", ".b.probability.tif.fpn-geo-999999-0badf00d.tmp.tif",
             ".b.probability.tif.fpn-geo-999999-0badf00d.tmp.tif.ovr"]
    for n in names:
        (folder / n).write_bytes(b"x")
    return [folder / n for n in names]


def test_a_rerun_at_once_sweeps_what_a_killed_run_left_when_no_run_holds_the_folder(tmp_path):
    left = _young_dead_temps(tmp_path)
    assert sorted(sweep_output_folders([tmp_path / "b.gpkg"])) == sorted(left)
    assert temps(tmp_path) == []


def test_young_temps_stay_while_another_run_holds_the_folder(tmp_path):
    """A live run (here: a claim held on another descriptor, as another process or container would) may own
    temps whose pid this process cannot see: the sweep keeps the minute's rule then."""
    left = _young_dead_temps(tmp_path)
    other = FolderClaim(tmp_path, shared=True)
    try:
        assert sweep_output_folders([tmp_path / "b.gpkg"]) == []
        assert all(p.exists() for p in left)
    finally:
        other.release()
    assert len(sweep_output_folders([tmp_path / "b.gpkg"])) == 3


def test_a_killed_runs_young_scratch_folder_is_swept_by_the_next_scratch_space(tmp_path):
    dead = tmp_path / "fpn-geo-999999-abc"
    dead.mkdir()
    (dead / "tile.bin").write_bytes(b"x")
    with scratch_space(tmp_path) as mine:
        assert not dead.exists()
        # held while it lives: another run's sweep keeps this run's young scratch (were its pid dead to it)
        other = FolderClaim(tmp_path)
        assert other.alone is False
        other.release()
    assert not mine.exists()
