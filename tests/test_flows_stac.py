"""`segment-scenes` over a STAC catalog, end to end with real parts: a Prefect server, a Dask cluster of worker
processes, and a HTTP server on 127.0.0.1 that honours Range requests, asks for a credential and counts the bytes
it serves. Scenes are COG crops of the real Kampala mosaic; the checkpoint is random (the polygons mean nothing,
every code path is the real one)."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone

import pyogrio
import pytest
from distributed import LocalCluster
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness
from prefect_dask import DaskTaskRunner

from flows.segment import segment_scenes
from fpn_geo.building_map import MAP_SCENES
from fpn_geo.stac_results import validate_results
from tests.flow_support.helpers import BIN, answers, env_for, free_port, start, stop, wait_for, wait_for_deployment
from tests.flow_support.range_server import range_server
from tests.flow_support.stac_catalog import cog_crop, static_catalog, static_collection

pytestmark = pytest.mark.slow

SMALL = {"window": 256, "overlap": 32, "batch": 2, "probability": "none"}
SECRET = "Bearer fpn-test-s3cr3t"


@pytest.fixture(scope="module")
def credential():
    """GDAL_HTTP_HEADERS for this process and the workers: the only place the credential is given."""
    old = os.environ.get("GDAL_HTTP_HEADERS")
    os.environ["GDAL_HTTP_HEADERS"] = f"Authorization: {SECRET}"
    yield os.environ["GDAL_HTTP_HEADERS"]
    if old is None:
        os.environ.pop("GDAL_HTTP_HEADERS", None)
    else:
        os.environ["GDAL_HTTP_HEADERS"] = old


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=240):  # a busy 2-core host starts it slowly
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def cluster(prefect_api, credential):
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        env={"PREFECT_API_URL": prefect_api, "GDAL_HTTP_HEADERS": credential},
    ) as c:
        yield c.scheduler_address


def _length(range_header: str, size: int) -> int:
    """Bytes a `Range: bytes=a-b` header asks for."""
    a, b = range_header.removeprefix("bytes=").split("-")
    return (min(int(b), size - 1) if b else size - 1) - int(a) + 1 if a else int(b)


def _all_text(folder) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


def test_a_static_catalog_over_http_end_to_end(prefect_api, cluster, checkpoint, tmp_path):
    served_dir, out_dir = tmp_path / "served", tmp_path / "out"
    served_dir.mkdir()
    cogs = {"scene-a": cog_crop(served_dir / "a.tif", 0, 0, 640, 512),
            "scene-b": cog_crop(served_dir / "b.tif", 384, 0, 640, 512)}
    run = segment_scenes.with_options(task_runner=DaskTaskRunner(address=cluster))
    with range_server(served_dir, require_header=("Authorization", SECRET)) as served:
        static_catalog(served_dir, cogs, served.url)
        kw = dict(stac={"url": f"{served.url}/catalog.json", "asset": "visual"}, checkpoint=str(checkpoint),
                  out_dir=str(out_dir), overrides=SMALL, quicklook=False, merged=str(tmp_path / "map.gpkg"))
        first = run(**kw)
        assert sorted(os.path.basename(p) for p in first["outputs"].values()) == ["scene-a.gpkg", "scene-b.gpkg"]
        assert len(first["processed"]) == 2
        # Read in place: every GET is ranged and none fetches the file; a scene is read about once in all (its
        # halos and each process's header reads on top), never once per window. A whole scene is segmented, so
        # all its full-resolution tiles are read; tests/test_stac.py shows one window reading 1/25 of a file.
        gets = [r for r in served.requests if r[0] == "GET" and r[1].endswith(".tif")]
        assert gets and all(r[2] for r in gets), "a GET without Range"
        for name, cog in cogs.items():
            size, sent = cog.stat().st_size, served.sent(cog.name)
            print(f"{name}: {sent} of {size} bytes served ({sent / size:.2f}) in "
                  f"{sum(r[1].endswith(cog.name) for r in gets)} ranged GETs")
            assert 0 < sent < 1.5 * size
            assert all(_length(r[2], size) < size / 2 for r in gets if r[1].endswith(cog.name))

        # STAC out: an item per scene, one catalog, valid STAC (core schemas offline, see validate_results).
        validate_results(out_dir / "catalog.json")
        item = json.loads((out_dir / "scene-a.item.json").read_text())
        assert item["properties"]["fpn:source"]["item"] == "scene-a"
        assert item["properties"]["fpn:source"]["identity"].startswith("etag:")
        assert any(link["rel"] == "derived_from" and link["href"].endswith("scene-a/scene-a.json")
                   for link in item["links"])
        assert item["assets"]["buildings"]["type"] == "application/geopackage+sqlite3"
        assert item["geometry"]["type"] in ("Polygon", "MultiPolygon")
        catalog = json.loads((out_dir / "catalog.json").read_text())
        assert sorted(link["href"] for link in catalog["links"] if link["rel"] == "item") == [
            "./scene-a.item.json", "./scene-b.item.json"]

        # The map: buildings keep their item, the map lists its scenes.
        buildings = pyogrio.read_dataframe(tmp_path / "map.gpkg", layer="buildings")
        assert set(buildings["item_id"]) <= {"scene-a", "scene-b"} and first["merged_buildings"] == len(buildings)
        assert len(pyogrio.read_dataframe(tmp_path / "map.gpkg", layer=MAP_SCENES)) == 2

        # The skip rule keys on item, asset identity (the server's ETag) and output parameters.
        served.reset()
        second = run(**kw)
        assert second["processed"] == [] and len(second["skipped"]) == 2
        assert sum(served.bytes_sent.values()) < 50_000, "a skipped scene's pixels were read"

        # A new item: only it is segmented, and the map only adds it.
        cogs["scene-c"] = cog_crop(served_dir / "c.tif", 768, 0, 640, 512)
        static_catalog(served_dir, cogs, served.url)
        third = run(**kw)
        assert [os.path.basename(p) for p in third["outputs"].values() if p.endswith("c.gpkg")] == ["scene-c.gpkg"]
        assert len(third["processed"]) == 1 and len(third["skipped"]) == 2
        assert third["merged_added"] == ["scene-c"]
        assert len(pyogrio.read_dataframe(tmp_path / "map.gpkg", layer=MAP_SCENES)) == 3

        # A missing asset key: one clear line naming the item's assets, nothing written.
        state = run(**{**kw, "stac": {"url": f"{served.url}/catalog.json", "asset": "image"}}, return_state=True)
        assert state.is_failed() and "its assets: visual" in state.message

    # The credential is nowhere: outputs, items, catalog, map, flow states, logs.
    assert "s3cr3t" not in _all_text(out_dir) + (tmp_path / "map.gpkg").read_bytes().decode("latin-1")
    with get_client(sync_client=True) as client:
        logs = client.read_logs()
    assert logs and not any("s3cr3t" in log.message for log in logs)


def _api_ready(url: str) -> bool:
    return answers(f"{url}/collections/kampala/items")


def test_a_stac_search_runs_as_a_deployment(prefect_api, cluster, checkpoint, tmp_path):
    """A STAC API search (rustac serve, a real item-search server) given to a served `segment-scenes` deployment
    from the `prefect` CLI, as a scheduled run gets it."""
    served_dir, out_dir = tmp_path / "served", tmp_path / "out"
    served_dir.mkdir()
    cogs = {"jan": cog_crop(served_dir / "jan.tif", 0, 0, 512, 512),
            "feb": cog_crop(served_dir / "feb.tif", 512, 0, 512, 512)}
    dates = {"jan": datetime(2024, 1, 15, tzinfo=timezone.utc), "feb": datetime(2024, 2, 15, tzinfo=timezone.utc)}
    env = env_for(prefect_api, FPN_GEO_DASK_ADDRESS=cluster, PREFECT_RUNNER_POLL_FREQUENCY="1")
    procs = []
    with range_server(served_dir, require_header=("Authorization", SECRET)) as served:
        try:
            collection = static_collection(tmp_path / "stac", cogs, served.url, dates, base=served_dir)
            api = f"http://127.0.0.1:{free_port()}"
            procs.append(start([str(BIN / "rustac"), "serve", "--addr", api.removeprefix("http://"),
                                "--load-collection-items", str(collection)], env, tmp_path / "rustac.log"))
            procs.append(start([str(BIN / "python"), "-m", "tests.flow_support.serve_segment_scenes"], env,
                               tmp_path / "serve.log"))
            wait_for(lambda: _api_ready(api), 60, "rustac serve")

            wait_for_deployment("segment-scenes/test", 120)
            params = {"stac": {"url": api, "collections": ["kampala"], "datetime": "2024-02-01/2024-03-01",
                               "asset": "visual"},
                      "checkpoint": str(checkpoint), "out_dir": str(out_dir), "overrides": SMALL, "quicklook": False}
            run = subprocess.run(
                [str(BIN / "prefect"), "deployment", "run", "segment-scenes/test", "--params", json.dumps(params),
                 "--watch", "--watch-interval", "1", "--watch-timeout", "400"],
                env=env, capture_output=True, text=True, timeout=450,
            )
            assert run.returncode == 0 and "Completed" in run.stdout, (
                run.stdout[-3000:] + run.stderr[-3000:] + (tmp_path / "serve.log").read_text()[-3000:])
        finally:
            stop(procs)
    assert sorted(p.name for p in out_dir.glob("*.gpkg")) == ["feb.gpkg"]  # the search chose February's item
    assert json.loads((out_dir / "feb.item.json").read_text())["properties"]["fpn:source"]["item"] == "feb"
