"""The Prefect flows, end to end, with real parts: a Prefect server, Dask clusters of worker processes, a served
deployment run from the `prefect` CLI, a worker killed mid-run. Scenes are small crops of the real Kampala mosaic
and the checkpoint a random-weights ResNet-18: the polygons mean nothing, but every code path is the real one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import torch
from distributed import Client, LocalCluster
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness
from prefect_dask import DaskTaskRunner

from flows.cluster import cpu_worker_shape, task_runner
from flows.segment import segment_scene, segment_scenes
from fpn_geo.config import load_config
from fpn_geo.pipeline import load_segmenter, segment
from tests.flow_support.helpers import BIN, crop, env_for, free_port, start, stop, wait_for, wait_for_deployment

pytestmark = pytest.mark.slow

# Small windows keep each scene at a few windows and each window well under a second on 2 cores.
SMALL = {"window": 256, "overlap": 32, "batch": 2, "probability": "none"}


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect server (the harness's, on a 127.0.0.1 port, temporary database) for the whole session."""
    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def cluster(prefect_api):
    """A real LocalCluster of 2 single-threaded worker processes."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        env={"PREFECT_API_URL": prefect_api},
    ) as c:
        yield c.scheduler_address


def geometries(path: Path):
    df = pyogrio.read_dataframe(path, layer="buildings")
    return df


# "The same result" between the flow and the library: the same ids, geometries and areas, and scores within one
# step of the uint8 blend. A score is a mean of uint8 probabilities / 255; the worker's torch build may round a
# convolution's sum differently (torch 2.14.1 moved one building's score by 1e-6), and a pixel that crosses a
# rounding edge moves the mean by at most 1/255. Outlines come from thresholds, so they must not move at all.
SCORE_TOLERANCE = 1 / 255


def assert_same_buildings(a: Path, b: Path) -> None:
    da, db = geometries(a), geometries(b)
    assert len(da) == len(db) > 0
    assert list(da["id"]) == list(db["id"])
    assert (da["area_m2"] == db["area_m2"]).all()
    assert np.abs(da["score"].to_numpy(np.float64) - db["score"].to_numpy(np.float64)).max() <= SCORE_TOLERANCE
    assert all(x.equals_exact(y, 0.0) for x, y in zip(da.geometry, db.geometry))


def library_run(scene: Path, checkpoint: Path, out: Path, **overrides) -> Path:
    """The CLI's path, with the workers' one torch thread: CPU convolutions split their sums by thread count,
    which moves a few probabilities by 1/255; with equal threads the outputs are identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        segment(str(scene), load_segmenter(checkpoint, "cpu"), out, load_config(**{**SMALL, **overrides}))
    finally:
        torch.set_num_threads(threads)
    return out


def test_the_default_task_runner_is_an_embedded_cluster_and_an_address_connects(monkeypatch):
    monkeypatch.delenv("FPN_GEO_DASK_ADDRESS", raising=False)
    local = task_runner(n_workers=2)
    assert (
        local.address is None and local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["host"] == "127.0.0.1"
    )
    assert local.cluster_kwargs["threads_per_worker"] == 1  # one task at a time; torch gets the cores
    assert local.cluster_kwargs["env"]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert (
        cpu_worker_shape(None, 2) == (1, 2)
        and cpu_worker_shape(None, 16) == (4, 4)
        and cpu_worker_shape(2, 2) == (2, 1)
    )
    assert task_runner("tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"
    monkeypatch.setenv("FPN_GEO_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    assert task_runner().address == "tcp://127.0.0.1:8786"


def test_workers_start_without_the_malloc_setting_that_halves_torch_speed(cluster):
    """flows.cluster drops the nanny's MALLOC_TRIM_THRESHOLD_ (2x slower CPU inference, benchmarks/flow_vs_cli.py)."""
    with Client(cluster) as client:
        seen = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert len(seen) == 2 and set(seen.values()) == {None}


def test_segment_scene_on_a_local_cluster_equals_the_library_path(prefect_api, cluster, checkpoint, tmp_path):
    scene = crop(tmp_path / "scene.tif", 200, 150, 600, 400)  # 2 x 3 windows
    expected = library_run(scene, checkpoint, tmp_path / "library.gpkg", block_windows=1)
    run = segment_scene.with_options(task_runner=DaskTaskRunner(address=cluster))
    state = run(
        scene=str(scene), checkpoint=str(checkpoint), out=str(tmp_path / "flow.gpkg"),
        overrides={**SMALL, "block_windows": 1}, blocks_per_task=1, return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["tasks"] == 6 and result["windows"] == 6  # a block per window: every window edge is a block edge
    assert 0 < result["bytes_received"] < 2 * 600 * 400 * 0.05  # polygons, not pixels (of a 2-band uint8 raster)
    assert_same_buildings(expected, tmp_path / "flow.gpkg")
    assert Path(result["quicklook"]).stat().st_size > 1000
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"progress-scene", "segment-scene"} <= keys


def test_a_worker_killed_mid_run_changes_nothing(prefect_api, checkpoint, tmp_path):
    """`dask scheduler` + two `dask worker`s from the command line; SIGKILL one while it holds a block."""
    scene = crop(tmp_path / "scene.tif", 100, 100, 900, 600)  # 3 x 4 windows in 4 blocks of up to 2 x 2
    expected = library_run(scene, checkpoint, tmp_path / "library.gpkg", block_windows=2)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = env_for(prefect_api, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # as a Nanny sets for its worker
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    procs = [start(scheduler, env, tmp_path / "scheduler.log")]
    try:
        for name in ("w1", "w2"):
            procs.append(start(
                [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                 "--no-dashboard", "--name", name], env, tmp_path / f"{name}.log",
            ))
        workers = {p.pid: p for p in procs[1:]}
        with Client(address, timeout=60) as monitor:
            monitor.wait_for_workers(2, timeout=60)
            pids = monitor.run(os.getpid)  # worker address -> pid
            killed = {}

            def kill_when_busy():
                """Kill the first worker seen holding a block for over a second (imports done, model running)."""
                def busy():
                    for addr, keys in monitor.processing().items():
                        if keys and addr in pids:
                            return addr
                    return None

                addr = wait_for(busy, 120, "a worker taking a block")
                time.sleep(1.0)
                if monitor.processing().get(addr):
                    os.kill(pids[addr], signal.SIGKILL)
                    killed["addr"], killed["had"] = addr, list(monitor.processing().get(addr, []))

            thread = threading.Thread(target=kill_when_busy, daemon=True)
            thread.start()
            run = segment_scene.with_options(task_runner=task_runner(address))
            state = run(
                scene=str(scene), checkpoint=str(checkpoint), out=str(tmp_path / "flow.gpkg"),
                overrides={**SMALL, "block_windows": 2}, blocks_per_task=1, quicklook=False, return_state=True,
            )
            thread.join(timeout=5)
        assert killed, "no worker was killed while holding a block: the run ended too soon to test anything"
        victim = workers[pids[killed["addr"]]]
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert state.is_completed(), state.message
        assert state.result()["tasks"] == 4
        assert_same_buildings(expected, tmp_path / "flow.gpkg")
    finally:
        stop(procs)


def test_a_served_deployment_runs_from_the_prefect_cli(prefect_api, cluster, checkpoint, tmp_path):
    scene = crop(tmp_path / "scene.tif", 300, 300, 300, 200)
    out = tmp_path / "deployed.gpkg"
    env = env_for(prefect_api, FPN_GEO_DASK_ADDRESS=cluster, PREFECT_RUNNER_POLL_FREQUENCY="1")
    server = start([str(BIN / "python"), "-m", "tests.flow_support.serve_segment"], env, tmp_path / "serve.log")
    try:
        wait_for_deployment("segment-scene/test", 90)
        params = {"scene": str(scene), "checkpoint": str(checkpoint), "out": str(out), "overrides": SMALL}
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "segment-scene/test", "--params", json.dumps(params),
             "--watch", "--watch-interval", "1", "--watch-timeout", "150"],
            env=env, capture_output=True, text=True, timeout=180,
        )
        assert run.returncode == 0, (
            run.stdout[-3000:] + run.stderr[-3000:] + (tmp_path / "serve.log").read_text()[-3000:]
        )
        assert "Completed" in run.stdout
        assert len(geometries(out)) > 0
    finally:
        stop([server])


def test_segment_scenes_skips_what_is_done_and_reports_failures(prefect_api, cluster, checkpoint, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i, (col, row) in enumerate([(0, 0), (400, 300), (900, 600)]):
        crop(inputs / f"s{i}.tif", col, row, 300, 200)
    run = segment_scenes.with_options(task_runner=DaskTaskRunner(address=cluster))
    kw = dict(scenes=str(inputs), checkpoint=str(checkpoint), out_dir=str(outputs), overrides=SMALL, quicklook=False)

    first = run(**kw, merged=str(tmp_path / "all.gpkg"))
    assert len(first["processed"]) == 3 and not first["skipped"]
    per_scene = sum(len(geometries(outputs / f"s{i}.gpkg")) for i in range(3))
    merged = geometries(tmp_path / "all.gpkg")
    assert len(merged) == per_scene and set(merged["scene"]) <= {"s0", "s1", "s2"} and merged.crs.to_epsg() == 4326

    second = run(**kw)
    assert second["processed"] == [] and len(second["skipped"]) == 3

    crop(inputs / "s1.tif", 400, 300, 300, 200, shift=7)  # new bytes, same name
    third = run(**kw)
    assert [Path(p).name for p in third["processed"]] == ["s1.tif"] and len(third["skipped"]) == 2

    data = (inputs / "s0.tif").read_bytes()
    (inputs / "s3.tif").write_bytes(data[: len(data) // 2])  # truncated: a corrupt scene
    state = run(**kw, return_state=True)
    assert state.is_failed()
    assert "1 of 4 scenes failed" in state.message and "s3" in state.message and "corrupt" in state.message
    assert not (outputs / "s3.gpkg").exists() and len(list(outputs.glob("s[012].gpkg"))) == 3
