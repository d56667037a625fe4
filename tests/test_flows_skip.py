"""segment-scenes' up-to-date check: every parameter that changes the output is in the key, and an out_dir equal to
the scenes folder does not make the next run segment its own probability rasters."""

from __future__ import annotations

import pytest
from distributed import LocalCluster
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness
from prefect_dask import DaskTaskRunner

from flows.scenes import drop_own_outputs, list_scenes
from flows.segment import segment_scenes
from fpn_geo.config import load_config, output_parameters
from fpn_geo.geopackage import read_provenance
from fpn_geo.provenance import is_up_to_date
from tests.flow_support.helpers import crop

SMALL = {"window": 256, "overlap": 32, "batch": 2}


def test_output_parameters_leave_out_only_what_does_not_change_the_output():
    keys = set(output_parameters(load_config()))
    assert {"threshold", "min_area_m2", "simplify_m", "window", "overlap", "block_windows", "match_gsd", "radiometry",
            "separate_touching", "probability"} <= keys
    assert not keys & {"device", "batch", "readers", "compile", "scratch_dir", "gdal_cache_mb", "post_threads"}


@pytest.fixture(scope="module")
def prefect_cluster():
    with prefect_test_harness(server_startup_timeout=60):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                          env={"PREFECT_API_URL": PREFECT_API_URL.value()}) as c:
            yield c.scheduler_address


@pytest.mark.slow
def test_changed_parameters_redo_and_own_outputs_are_not_scenes(prefect_cluster, checkpoint, tmp_path):
    folder = tmp_path / "scenes"  # scenes and outputs in one folder
    folder.mkdir()
    crop(folder / "s0.tif", 0, 0, 300, 200)
    run = segment_scenes.with_options(task_runner=DaskTaskRunner(address=prefect_cluster))
    kw = dict(scenes=str(folder), checkpoint=str(checkpoint), out_dir=str(folder), quicklook=False)

    first = run(**kw, overrides=SMALL)
    assert len(first["processed"]) == 1 and (folder / "s0.probability.tif").is_file()
    assert list_scenes(str(folder)) != drop_own_outputs(list_scenes(str(folder)))[0]  # the COG is there, and dropped

    second = run(**kw, overrides=SMALL)
    assert second["processed"] == [] and len(second["skipped"]) == 1 and not second["failed"]
    assert sorted(p.name for p in folder.glob("*.gpkg")) == ["s0.gpkg"]

    third = run(**kw, overrides={**SMALL, "threshold": 0.6})  # a parameter that changes the output
    assert len(third["processed"]) == 1
    assert '"threshold": 0.6' in read_provenance(folder / "s0.gpkg")["parameters"]

    fourth = run(**kw, overrides={**SMALL, "threshold": 0.6, "batch": 1})  # one that does not
    assert fourth["processed"] == []
    assert not is_up_to_date(folder / "s0.gpkg", "x", "y", output_parameters(load_config(**SMALL)))
