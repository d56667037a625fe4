"""The torch tracer gives what the numpy tracer gives: the same corners in the same order, so the same rings and
polygons. CPU tensors here; the CUDA case skips without a GPU."""

import numpy as np
import pytest
import shapely
import torch
from scipy import ndimage

from fpn_geo import trace, trace_torch
from tests.test_trace import SHAPES as GDAL_SHAPES

SHAPES = [*GDAL_SHAPES, ["1"], ["0"]]  # test_trace.py's hand-made cases, a single pixel and nothing


def random_rasters(n: int, seed: int = 11):
    rng = np.random.default_rng(seed)
    for case in range(n):
        h, w = rng.integers(1, 25, 2)
        labels = rng.integers(0, rng.integers(1, 6) + 1, (h, w)).astype(np.int32)
        if case % 3 == 0:  # bigger regions, longer straight runs
            labels = ndimage.zoom(labels, 3, order=0)
        yield labels, int(rng.integers(0, 500)), int(rng.integers(0, 500))


def assert_same_as_numpy(labels: np.ndarray, x0: int, y0: int, device: str = "cpu") -> int:
    expected = trace.corner_rings(labels)
    got = trace_torch.corner_rings(torch.from_numpy(labels).to(device))
    for e, g in zip(expected, got):
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)
    polygons, values = trace_torch.trace_labels_torch(torch.from_numpy(labels).to(device), x0, y0)
    want, want_values = trace.trace_labels(labels, x0, y0)
    np.testing.assert_array_equal(values, want_values)
    assert len(polygons) == len(want)
    assert all(shapely.equals_exact(polygons, want, 0))
    return len(polygons)


@pytest.mark.parametrize("rows", SHAPES)
def test_hand_made_shapes_trace_as_numpy_does(rows):
    labels = np.array([[int(c) for c in r] for r in rows], dtype=np.int32)
    assert_same_as_numpy(labels, 3, 5)


def test_random_label_rasters_trace_as_numpy_does():
    traced = sum(assert_same_as_numpy(*case) for case in random_rasters(150))
    assert traced > 3000


def test_a_large_block_of_noise_traces_as_numpy_does():
    """Long pointer-doubling chains and many pinches: a 200x300 raster of mostly small random regions."""
    rng = np.random.default_rng(3)
    labels = ndimage.zoom(rng.integers(0, 40, (50, 75)), 4, order=0).astype(np.int32)
    labels[rng.random(labels.shape) < 0.05] = 0
    assert assert_same_as_numpy(labels, 0, 0) > 1000


def test_nothing_labelled_gives_no_corners():
    cx, cy, lab, ring = trace_torch.corner_rings(torch.zeros((4, 6), dtype=torch.int32))
    assert len(cx) == len(cy) == len(lab) == len(ring) == 0
    polygons, values = trace_torch.trace_labels_torch(torch.zeros((4, 6), dtype=torch.int32))
    assert len(polygons) == 0 and len(values) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_traces_as_numpy_does():
    traced = sum(assert_same_as_numpy(*case, device="cuda") for case in random_rasters(60, seed=5))
    assert traced > 1000
