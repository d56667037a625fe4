"""STAC in (fpn_geo.stac): static catalogs read over a real HTTP server on 127.0.0.1 that honours Range requests,
assets read in place through /vsicurl/, asset identities from the server, and credentials kept out of paths,
logs and errors."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import datetime, timezone

import pytest
import rasterio
from rasterio.windows import Window

from fpn_geo.errors import InputError
from fpn_geo.stac import (
    REMOTE_GDAL_OPTIONS,
    StacSource,
    apply_remote_gdal_options,
    gdal_path,
    http_headers,
    redact,
    resolve_stac,
)
from tests.flow_support.helpers import BIN, free_port, start, stop, wait_for
from tests.flow_support.range_server import range_server
from tests.flow_support.stac_catalog import cog_crop, static_catalog, static_collection


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    cogs = {"scene-a": cog_crop(folder / "a.tif", 0, 0, 1024, 1024),
            "scene-b": cog_crop(folder / "b.tif", 512, 0, 1024, 1024)}
    return folder, cogs


def test_gdal_paths_read_in_place():
    assert gdal_path("https://h.example/a/b.tif") == "/vsicurl/https://h.example/a/b.tif"
    assert gdal_path("s3://bucket/k/x.tif") == "/vsis3/bucket/k/x.tif"
    assert gdal_path("gs://bucket/x.tif") == "/vsigs/bucket/x.tif"
    assert gdal_path("file:///data/a%20b.tif") == "/data/a b.tif"
    assert gdal_path("/data/x.tif") == "/data/x.tif"
    with pytest.raises(InputError, match="ftp://"):
        gdal_path("ftp://h/x.tif")


def test_redact_removes_userinfo_and_query_but_keeps_text():
    text = "cannot open /vsicurl/https://me:hunter2@h.example/x.tif?X-Amz-Signature=s3cr3t&a=b: why? no"
    out = redact(text)
    assert "hunter2" not in out and "s3cr3t" not in out and "me:" not in out
    assert out.endswith("why? no") and "h.example/x.tif" in out


def test_remote_options_do_not_override_the_environment():
    env = {"VSI_CACHE": "FALSE"}
    apply_remote_gdal_options(env)
    assert env["VSI_CACHE"] == "FALSE"
    assert env["GDAL_DISABLE_READDIR_ON_OPEN"] == REMOTE_GDAL_OPTIONS["GDAL_DISABLE_READDIR_ON_OPEN"]


def test_http_headers_from_gdal_settings():
    env = {"GDAL_HTTP_HEADERS": "X-Api-Key: k1\r\nX-Other: v", "GDAL_HTTP_BEARER": "tok"}
    assert http_headers(env) == {"X-Api-Key": "k1", "X-Other": "v", "Authorization": "Bearer tok"}
    assert http_headers({"GDAL_HTTP_USERPWD": "me:pw"}) == {"Authorization": "Basic bWU6cHc="}


def test_static_catalog_over_http_reads_part_of_each_cog(served_folder):
    folder, cogs = served_folder
    with range_server(folder) as served:
        catalog = static_catalog(folder, cogs, served.url)
        scenes = resolve_stac(StacSource(url=f"{served.url}/{catalog.name}"))
        assert [s.item_id for s in scenes] == ["scene-a", "scene-b"]
        for s in scenes:
            assert s.path.startswith("/vsicurl/http://127.0.0.1:")
            assert s.identity and s.identity.startswith("etag:")
        served.reset()
        with rasterio.Env(**REMOTE_GDAL_OPTIONS), rasterio.open(scenes[0].path) as src:
            data = src.read(window=Window(256, 256, 256, 256))
        with rasterio.open(cogs["scene-a"]) as local:
            assert (data == local.read(window=Window(256, 256, 256, 256))).all()
        size = cogs["scene-a"].stat().st_size
        sent = served.sent("a.tif")
        assert 0 < sent < size / 4, f"read {sent} of {size} bytes for one 256x256 window"
        assert all(r[2] for r in served.requests if r[0] == "GET" and r[1] == "/a.tif"), "a GET without Range"


def test_missing_asset_lists_the_items_assets(served_folder):
    folder, cogs = served_folder
    with range_server(folder) as served:
        catalog = static_catalog(folder, cogs, served.url)
        with pytest.raises(InputError) as e:
            resolve_stac(StacSource(url=str(catalog), asset="image"))
    msg = str(e.value)
    assert "no asset 'image'" in msg and "its assets: visual" in msg and "\n" not in msg


def test_static_source_refuses_search_parameters(served_folder):
    folder, cogs = served_folder
    catalog = static_catalog(folder, cogs, "http://127.0.0.1:9")
    with pytest.raises(InputError, match="need a STAC API"):
        resolve_stac(StacSource(url=str(catalog), bbox=[32.5, 0.3, 32.6, 0.4]))


def test_credentials_from_the_environment_never_in_paths_or_errors(served_folder, monkeypatch):
    folder, cogs = served_folder
    secret = "Bearer s3cr3t-token-value"
    with range_server(folder, require_header=("Authorization", secret)) as served:
        url = f"{served.url}/catalog.json"
        static_catalog(folder, cogs, served.url)
        monkeypatch.delenv("GDAL_HTTP_HEADERS", raising=False)
        with pytest.raises(InputError) as e:  # no credentials: a clean one-line refusal
            resolve_stac(StacSource(url=url + "?sig=leaky"))
        assert "leaky" not in str(e.value) and "\n" not in str(e.value)
        monkeypatch.setenv("GDAL_HTTP_HEADERS", f"Authorization: {secret}")
        scenes = resolve_stac(StacSource(url=url))
        assert scenes and all("s3cr3t" not in repr(s) for s in scenes)
        with rasterio.Env(**REMOTE_GDAL_OPTIONS), rasterio.open(scenes[0].path) as src:  # GDAL sends the header
            assert src.read(1, window=Window(0, 0, 16, 16)).shape == (16, 16)
        assert os.environ["GDAL_HTTP_HEADERS"].endswith("s3cr3t-token-value")


@pytest.fixture
def stac_api(served_folder, tmp_path):
    """A real STAC API: `rustac serve` (in-memory backend, from PyPI: no database to install) loaded with a
    collection of the served COGs, dated a month apart."""
    folder, cogs = served_folder
    with range_server(folder) as served:
        dates = {"scene-a": datetime(2024, 1, 15, tzinfo=timezone.utc),
                 "scene-b": datetime(2024, 2, 15, tzinfo=timezone.utc)}
        collection = static_collection(tmp_path / "stac", cogs, served.url, dates, base=folder)
        port = free_port()
        log = tmp_path / "rustac.log"
        proc = start([str(BIN / "rustac"), "serve", "--addr", f"127.0.0.1:{port}", "--load-collection-items",
                      str(collection)], dict(os.environ), log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _answers(f"{url}/collections/kampala/items"), 60, "rustac serve")
            yield url, served
        finally:
            stop([proc])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and len(json.load(r)["features"]) == 2
    except (OSError, ValueError, KeyError):
        return False


def test_a_stac_api_search_selects_items(stac_api):
    url, served = stac_api
    everything = resolve_stac(StacSource(url=url, collections=["kampala"]))
    assert [s.item_id for s in everything] == ["scene-a", "scene-b"]
    assert all(s.path.startswith(f"/vsicurl/{served.url}/") and s.collection == "kampala" for s in everything)
    february = resolve_stac(StacSource(url=url, collections=["kampala"], datetime="2024-02-01/2024-03-01"))
    assert [s.item_id for s in february] == ["scene-b"]
    nowhere = resolve_stac(StacSource(url=url, collections=["kampala"], bbox=[10.0, 10.0, 10.1, 10.1]))
    assert nowhere == []
    with pytest.raises(InputError, match="no asset 'image'"):
        resolve_stac(StacSource(url=url, collections=["kampala"], asset="image"))


def test_a_scene_that_breaks_mid_download_fails_on_one_line_and_leaves_nothing(served_folder, checkpoint, tmp_path,
                                                                               caplog):
    """The server answers the header and a few tiles, then 503s: GDAL retries, then the read fails; the library
    raises one line without the URL's secret, and no output or temporary file is left."""
    from fpn_geo.config import load_config
    from fpn_geo.errors import FpnGeoError
    from fpn_geo.pipeline import load_segmenter, segment

    folder, cogs = served_folder
    out = tmp_path / "out" / "a.gpkg"
    out.parent.mkdir()
    env = {**REMOTE_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY": "1", "GDAL_HTTP_RETRY_DELAY": "0.1"}
    apply_remote_gdal_options({})  # the log filter only: the options go in through rasterio.Env here
    with range_server(folder, fail_after=2) as served, rasterio.Env(**env):
        path = f"/vsicurl/{served.url}/a.tif?token=s3cr3t"
        with pytest.raises(FpnGeoError) as e:
            segment(path, load_segmenter(checkpoint, "cpu"), out,
                    load_config(window=256, overlap=32, batch=2, probability="none"))
    msg = str(e.value)
    assert "\n" not in msg and "s3cr3t" not in msg
    assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())
    assert any("503" in r.getMessage() for r in caplog.records), "GDAL's retries were not logged"
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)
