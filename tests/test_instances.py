"""Touching buildings come apart when a contact channel is given, and stay one blob without it."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from shapely.geometry import box

from fpn_geo.errors import ConfigError, InputError
from fpn_geo.instances import connected_components, label_components, label_instances
from fpn_geo.instances_gpu import components, consecutive, label_instances_torch
from fpn_geo.truth import CONTACT, rasterize_classes, rasterize_instances, read_labels

ROOT = Path(__file__).resolve().parents[1]
KAMPALA_TIF = ROOT / "data/kampala_oam/mosaic_z21_12x8_3072x2048.tif"
KAMPALA_LABELS = ROOT / "data/kampala_oam/labels.geojson"


def _label_torch(footprint, contact=None, threshold=0.5):
    """`label_instances_torch` (what CUDA runs) on the CPU, numpy in and out."""
    sep = None if contact is None else torch.from_numpy(contact)
    return label_instances_torch(torch.from_numpy(footprint), sep, threshold).numpy()


@pytest.fixture(params=["cpu", "torch"])
def label(request):
    """Both labellers must pass the same tests: scipy/skimage (CPU) and torch (the model's device)."""
    return label_instances if request.param == "cpu" else _label_torch


def _channels(geoms, transform, shape, contact_px=2):
    """Perfect model output: footprint = the buildings, contact = the contact class."""
    instances = rasterize_instances(geoms, transform, shape)
    classes = rasterize_classes(geoms, transform, shape, contact_px=contact_px)
    footprint = np.where(instances > 0, 255, 0).astype(np.uint8)
    contact = np.where(classes == CONTACT, 255, 0).astype(np.uint8)
    return instances, footprint, contact


def test_touching_squares_split_with_contact_only(label):
    transform = from_origin(0, 40, 1, 1)
    instances, footprint, contact = _channels([box(5, 10, 15, 20), box(15, 10, 25, 20)], transform, (40, 40))
    assert connected_components(footprint > 0).max() == 1
    assert label(footprint, None).max() == 1
    labels = label(footprint, contact)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert ((labels > 0) == (footprint > 0)).all()  # every building pixel gets an id
    # each label sits on one square: ids agree with the truth instances
    for truth_id in (1, 2):
        assert len(np.unique(labels[instances == truth_id])) == 1
    assert labels[25, 6] != labels[25, 23]


def test_diagonal_touch_is_two_components(label):
    fp = np.zeros((6, 6), np.uint8)
    fp[0:3, 0:3] = 255
    fp[3:6, 3:6] = 255
    assert label(fp).max() == 2


def test_blob_that_is_all_contact_keeps_an_id(label):
    fp = np.zeros((10, 10), np.uint8)
    ct = np.zeros_like(fp)
    fp[2:4, 2:4] = 255
    ct[2:4, 2:4] = 255
    labels = label(fp, ct)
    assert labels.max() == 1 and (labels[2:4, 2:4] == 1).all()


def test_kampala_buildings_come_apart_with_contact(label):
    with rasterio.open(KAMPALA_TIF) as src:
        transform, shape, crs = src.transform, src.shape, src.crs
    labels = read_labels(KAMPALA_LABELS, crs)
    instances, footprint, contact = _channels(labels, transform, shape)
    n_truth = len(np.unique(instances)) - 1
    assert n_truth == 108
    merged = label(footprint).max()
    split = label(footprint, contact).max()
    assert merged < n_truth  # some Kampala buildings touch
    assert split == n_truth


def test_bad_inputs_are_clear_errors():
    fp = np.zeros((4, 4), np.uint8)
    with pytest.raises(InputError, match="float64"):
        label_instances(fp.astype(float))
    with pytest.raises(InputError, match="shape"):
        label_instances(fp, np.zeros((3, 4), np.uint8))
    with pytest.raises(ConfigError, match="threshold=0"):
        label_instances(fp, threshold=0)


def _separator_channels(geoms, transform, shape, gap_px=2):
    """Perfect output of a separator model: footprint = 1 - P(background), channel 1 = P(separator)."""
    from fpn_geo.truth import SEPARATOR, separator_target

    instances = rasterize_instances(geoms, transform, shape)
    target = separator_target(instances, gap_px)
    footprint = np.where(target > 0, 255, 0).astype(np.uint8)
    separator = np.where(target == SEPARATOR, 255, 0).astype(np.uint8)
    return instances, target, footprint, separator


def test_separator_target_is_inner_border_plus_gap():
    from fpn_geo.truth import INTERIOR, SEPARATOR, separator_target

    inst = np.zeros((12, 20), np.int32)
    inst[2:10, 2:8] = 1
    inst[2:10, 10:18] = 2  # a 2-px gap (cols 8, 9)
    t = separator_target(inst, gap_px=2)
    assert (t[2, 2:8] == SEPARATOR).all() and (t[2:10, 2] == SEPARATOR).all()  # inner border
    assert (t[3:9, 3:7] == INTERIOR).all()
    assert (t[4:8, 8:10] == SEPARATOR).all()  # background between the two buildings
    assert t[0, 0] == 0 and t[5, 19] == 0  # background next to one building only stays background


@pytest.mark.parametrize("gap", [0, 1, 2])
def test_separator_model_splits_touching_and_close_squares(gap, label):
    transform = from_origin(0, 40, 1, 1)
    geoms = [box(5, 10, 15, 20), box(15 + gap, 10, 25 + gap, 20)]
    instances, _, footprint, separator = _separator_channels(geoms, transform, (40, 40))
    labels = label(footprint, separator)
    assert labels.max() == 2
    for truth_id in (1, 2):
        assert len(np.unique(labels[instances == truth_id])) == 1
    assert label(footprint, None).max() == 1  # without the separator they merge


def test_kampala_buildings_come_apart_with_separator(label):
    with rasterio.open(KAMPALA_TIF) as src:
        transform, shape, crs = src.transform, src.shape, src.crs
    labels = read_labels(KAMPALA_LABELS, crs)
    instances, _, footprint, separator = _separator_channels(labels, transform, shape)
    split = label(footprint, separator)
    merged = label(footprint)
    fg = instances > 0

    def shared(labels):
        """Truth buildings whose pixels share a label with another building."""
        pairs = np.unique(np.stack([instances[fg], labels[fg]]), axis=1)
        per_label = np.bincount(pairs[1])
        return len(np.unique(pairs[0][per_label[pairs[1]] > 1]))

    assert shared(merged) > 15
    # 3 OSM outlines overlap others and are drawn over (later wins), leaving pieces without a core
    assert shared(split) <= 6


def test_regularize_squares_nearly_rectangular_outlines_only():
    import shapely
    from shapely.affinity import rotate
    from shapely.geometry import Polygon

    from fpn_geo.regularize import regularize, vertex_count

    # a rotated 10 x 6 rectangle traced with stair steps (a raster outline) and an L-shape
    stairs = rotate(box(0, 0, 10, 6), 30, origin=(0, 0)).buffer(0.3, join_style="mitre").simplify(0.05)
    jagged = Polygon([(0, 0), (10, 0), (10, 6.2), (5, 6.2), (5, 5.8), (0, 5.8)])
    ell = Polygon([(0, 0), (10, 0), (10, 4), (4, 4), (4, 10), (0, 10)])
    out = regularize([jagged, ell, stairs, None])
    assert shapely.get_num_coordinates(out[0]) == 5 and abs(out[0].area - jagged.area) / jagged.area < 0.05
    assert out[1].equals(ell)  # not nearly rectangular: kept
    assert shapely.get_num_coordinates(out[2]) == 5
    assert out[3] is None
    assert vertex_count(out[:3]) < vertex_count([jagged, ell, stairs])


def test_label_components_is_4_connected_and_ignores_the_separator():
    fp = np.zeros((5, 5), np.uint8)
    fp[1, 1] = fp[2, 2] = 255
    assert label_components(fp, fp, 0.5).max() == 2


def test_torch_components_equal_scipy_label():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(8):
        mask = ndimage.zoom(rng.random((30, 40)), 5, order=1) > rng.uniform(0.4, 0.6)
        assert (consecutive(components(torch.from_numpy(mask))).numpy() == connected_components(mask)).all()
    spiral = np.zeros((41, 41), bool)  # one long thin component: many hops for naive propagation
    for k in range(0, 20, 2):
        spiral[k, k:41 - k] = spiral[k:41 - k, 40 - k] = spiral[40 - k, k + 2:41 - k] = spiral[k + 2:41 - k, k] = True
    spiral[k + 1, k + 1] = True
    assert (consecutive(components(torch.from_numpy(spiral))).numpy() == connected_components(spiral)).all()


def test_torch_labels_equal_the_watershed_except_on_split_lines():
    """Blobs with one core get the same id from both; where touching buildings are split the flood may draw the
    line a pixel away from the exact watershed."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    footprint = (ndimage.zoom(rng.random((24, 32)), 8, order=3).clip(0, 1) * 255).astype(np.uint8)
    separator = (ndimage.zoom(rng.random((48, 64)), 4, order=1) * 140).astype(np.uint8)
    cpu, gpu = label_instances(footprint, separator), _label_torch(footprint, separator)
    assert ((cpu > 0) == (gpu > 0)).all() and cpu.max() == gpu.max() > 10
    blobs = connected_components(cpu > 0)
    ids_per_blob = np.bincount(np.unique(np.stack([blobs[cpu > 0], cpu[cpu > 0]]), axis=1)[0])
    whole = ids_per_blob[blobs] == 1  # blobs the watershed did not split
    assert (whole & (cpu > 0)).sum() > 1000 and (cpu[whole] == gpu[whole]).all()
    assert (cpu == gpu).mean() > 0.99
