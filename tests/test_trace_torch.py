"""The torch tracer gives what the numpy tracer gives: the same corners in the same order, so the same rings and
polygons; a block's outlines made where its labels are equal those made on the host, so the same pieces. CPU
tensors here; the CUDA cases skip without a GPU."""

import numpy as np
import pytest
import shapely
import torch
from scipy import ndimage

from fpn_geo import trace, trace_torch, vectorize
from fpn_geo.tiling import Block
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


def assert_same_outlines(labels: np.ndarray, x0: int, y0: int, device: str = "cpu") -> int:
    """`block_outlines_torch` against `block_outlines`, with and without the background traced, and the pieces the
    host makes of each: identical arrays, identical polygons, identical sums."""
    footprint = np.random.default_rng(labels.size).integers(0, 256, labels.shape, dtype=np.uint8)
    h, w = labels.shape
    block = Block(2, 3, y0, y0 + h, x0, x0 + w)
    pieces = 0
    for with_background in (False, True):
        want = vectorize.block_outlines(labels, footprint, with_background)
        got = trace_torch.block_outlines_torch(
            torch.from_numpy(labels).to(device), torch.from_numpy(footprint).to(device), with_background
        )
        assert got.shape == want.shape and got.buildings == want.buildings
        for g, e in [*zip(got.corners, want.corners), (got.psum, want.psum), (got.count, want.count)]:
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)
        assert (got.nodes is None) == (want.nodes is None)
        for g, e in zip(got.nodes or (), want.nodes or ()):
            np.testing.assert_array_equal(g, e)
        simplify = 1.5 if with_background else 0.0
        a = vectorize.pieces_of(got, block, (500, 500), simplify)
        b = vectorize.pieces_of(want, block, (500, 500), simplify)
        assert [(p.psum, p.count) for p in a] == [(p.psum, p.count) for p in b]
        assert all(shapely.equals_exact(p.geom, q.geom, 0) for p, q in zip(a, b, strict=True))
        pieces += len(a)
    return pieces


@pytest.mark.parametrize("rows", SHAPES)
def test_hand_made_shapes_reduce_to_the_outlines_numpy_gives(rows):
    labels = np.array([[int(c) for c in r] for r in rows], dtype=np.int32)
    assert_same_outlines(labels, 3, 5)


def test_random_label_rasters_reduce_to_the_outlines_numpy_gives():
    """Labels with gaps, labels in several parts, background in several parts: the background's parts are
    numbered as scipy numbers them, so the coverage and its nodes are the same."""
    assert sum(assert_same_outlines(*case) for case in random_rasters(120, seed=7)) > 1500


def test_a_block_of_real_buildings_reduces_to_the_same_pieces():
    """A block's size (320²): 60 labels in touching runs, the background in many parts, long shared outlines."""
    rng = np.random.default_rng(4)
    labels = ndimage.zoom(rng.integers(0, 60, (40, 40)), 8, order=0).astype(np.int32)
    labels[ndimage.binary_dilation(rng.random(labels.shape) < 0.002, iterations=6)] = 0
    assert assert_same_outlines(labels, 320, 640) > 300


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reduces_to_the_outlines_numpy_gives():
    assert sum(assert_same_outlines(*case, device="cuda") for case in random_rasters(60, seed=9)) > 500
