"""Vectorizing blocks: buildings cut by block edges come out whole, once, with their true area."""

import geopandas as gpd
import numpy as np
import pytest
import shapely

from fpn_geo.config import load_config
from fpn_geo.model.meta import ModelMeta
from fpn_geo.pipeline import Segmenter, segment
from fpn_geo.tiling import Block
from fpn_geo.vectorize import EdgeJoiner, Piece, join_pieces, split_at_edges, trace_pieces
from tests.doubles import write_raster


class Bright:
    """Building wherever band 1 is bright."""

    def __call__(self, images, windows):
        return np.where(images[:, :1] > 128, 255, 0).astype(np.uint8)


def shapes_scene(tmp_path, h=600, w=700):
    data = np.zeros((3, h, w), np.uint8)
    data[:, 50:250, 60:260] = 255  # a square across four blocks' corner (block edges every 96 px)
    ring = np.zeros((h, w), bool)
    ring[300:560, 300:640] = True
    ring[360:500, 360:580] = False  # a courtyard building crossing many block edges, with a hole
    data[:, ring] = 255
    data[:, 20:40, 500:520] = 255  # a small building inside one block
    return write_raster(tmp_path / "shapes.tif", data)  # 0.3 m pixels, UTM


@pytest.mark.parametrize("block_windows", [1, 2, 100])
def test_buildings_across_block_edges_come_out_whole_with_their_area(tmp_path, block_windows):
    cfg = load_config(
        window=128, overlap=32, simplify_m=0.0, min_area_m2=1.0, probability="none", block_windows=block_windows
    )
    seg = Segmenter(Bright(), ModelMeta(classes=("background", "building"), gsd_m=None))
    summary = segment(str(shapes_scene(tmp_path)), seg, tmp_path / "o.gpkg", cfg)
    got = gpd.read_file(tmp_path / "o.gpkg", layer="buildings").sort_values("area_m2").reset_index(drop=True)
    assert len(got) == summary.buildings == 3
    px = 0.3 * 0.3
    assert got["area_m2"].tolist() == pytest.approx([400 * px, 200 * 200 * px, (260 * 340 - 140 * 220) * px], rel=1e-3)
    assert len(got.geometry[2].interiors) == 1  # the courtyard survives the joins
    assert all(g.is_valid for g in got.geometry)


def test_pieces_of_one_block_never_join_but_pieces_across_an_edge_do():
    a = Piece(shapely.box(0, 0, 10, 10), 10.0, 100.0, frozenset([(0, 0)]))
    b = Piece(shapely.box(10, 0, 20, 10), 10.0, 100.0, frozenset([(0, 0)]))  # a neighbour split by the watershed
    c = Piece(shapely.box(20, 0, 30, 10), 10.0, 100.0, frozenset([(0, 1)]))  # the next block
    joined = join_pieces([a, b, c])
    assert len(joined) == 2
    assert sorted(p.geom.area for p in joined) == [100.0, 200.0]
    assert sum(p.count for p in joined) == 300.0


def test_edge_pieces_are_held_only_until_the_next_row_of_blocks():
    labels = np.zeros((10, 10), np.int32)
    labels[5:10, 2:4] = 1  # reaches the block's bottom edge
    labels[1:3, 6:8] = 2  # inside
    block = Block(0, 0, 0, 10, 0, 10)
    pieces = trace_pieces(labels, np.full((10, 10), 255, np.uint8), block)
    done, edges = split_at_edges(pieces, block, (20, 10))
    assert [p.geom.area for p in done] == [4.0] and [p.geom.area for p in edges] == [10.0]
    joiner = EdgeJoiner((20, 10))
    assert joiner.add_row(edges, 10) == [] and len(joiner.open) == 1
    below = trace_pieces(
        np.pad(np.ones((3, 2), np.int32), ((0, 7), (2, 6))),
        np.full((10, 10), 255, np.uint8),
        Block(1, 0, 10, 20, 0, 10),
    )
    finished = joiner.add_row(below, 20)
    assert len(finished) == 1 and finished[0].geom.area == 16.0 and joiner.open == []


def test_right_angled_outlines_turn_a_ragged_rectangle_into_a_rectangle(tmp_path):
    data = np.zeros((3, 200, 200), np.uint8)
    data[:, 40:120, 30:150] = 255
    data[:, 40:44, 60:64] = 0  # a notch: not quite a rectangle
    scene = write_raster(tmp_path / "r.tif", data)
    seg = Segmenter(Bright(), ModelMeta(classes=("background", "building"), gsd_m=None))
    for iou, vertices in ((0.0, 8), (0.85, 4)):
        cfg = load_config(window=128, overlap=32, simplify_m=0.0, regularize=iou, probability="none")
        segment(str(scene), seg, tmp_path / f"r{iou}.gpkg", cfg)
        g = gpd.read_file(tmp_path / f"r{iou}.gpkg", layer="buildings").geometry[0]
        assert len(g.exterior.coords) - 1 == vertices


def test_a_sliver_across_an_edge_never_merges_two_buildings_its_block_neighbour_kept_apart():
    a = Piece(shapely.box(0, 0, 10, 10), 10.0, 100.0, frozenset([(0, 0)]))
    b = Piece(shapely.box(0, 10, 10, 20), 10.0, 100.0, frozenset([(0, 0)]))  # touches a: the watershed split them
    sliver = Piece(shapely.box(10, 4, 12, 20), 1.0, 32.0, frozenset([(0, 1)]))  # shares 6 with a, 10 with b
    for order in ([a, b, sliver], [sliver, b, a]):
        joined = join_pieces(order)
        assert len(joined) == 2
        with_sliver = max(joined, key=lambda p: p.geom.area)
        assert with_sliver.geom.area == 132.0 and with_sliver.geom.covers(b.geom)  # the longer shared edge wins


def overlapping_pairs(geoms, min_area: float) -> tuple[int, int]:
    """(pairs of polygons that touch or overlap, pairs that overlap by more than min_area)."""
    geoms = np.asarray(geoms, dtype=object)
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    left, right = left[left < right], right[left < right]
    shared = shapely.area(shapely.intersection(geoms[left], geoms[right]))
    return len(left), int((shared > min_area).sum())


def ragged_neighbours(seed: int = 0) -> np.ndarray:
    """Three buildings that share ragged outlines (random walks), with background around them, in a 120² block."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((120, 120), np.int32)
    split = 60 + np.cumsum(rng.integers(-2, 3, 120))  # a column per row: 1 left of it, 2 right of it
    for y in range(10, 110):
        labels[y, 10:split[y]] = 1
        labels[y, split[y]:110] = 2
    cut = 40 + np.cumsum(rng.integers(-2, 3, 120))  # building 3 cut out of 2's bottom along another ragged line
    for x in range(0, 120):
        labels[cut[x]:110, x][labels[cut[x]:110, x] == 2] = 3
    return labels


def test_neighbours_sharing_ragged_outlines_never_overlap_once_simplified():
    labels = ragged_neighbours()
    block = Block(0, 0, 0, 120, 0, 120)
    footprint = np.full(labels.shape, 255, np.uint8)
    traced = np.array([p.geom for p in trace_pieces(labels, footprint, block)], dtype=object)
    apart = shapely.simplify(traced, 2.0, preserve_topology=False)  # each outline on its own: what went wrong
    assert overlapping_pairs(apart, 0.1)[1] > 0
    simplified = [p.geom for p in trace_pieces(labels, footprint, block, simplify_px=2.0)]
    assert overlapping_pairs(simplified, 0.0) == (3, 0)
    assert shapely.coverage_is_valid(np.array(simplified, dtype=object))
    assert sum(shapely.get_num_coordinates(simplified)) < sum(shapely.get_num_coordinates(traced)) / 2


def test_simplification_leaves_the_block_border_where_it_is():
    """Pieces cut by the block's edge keep the stretch of it they cover, to the pixel, so they join their
    neighbours' exactly; the rest of their outline is simplified."""
    labels = ragged_neighbours(1)[5:65, 30:90]  # cut through all three buildings by every side of the block
    block = Block(1, 1, 60, 120, 60, 120)
    footprint = np.full(labels.shape, 255, np.uint8)
    raw = trace_pieces(labels, footprint, block, (300, 300))
    simple = trace_pieces(labels, footprint, block, (300, 300), simplify_px=2.0)
    border = shapely.box(block.x0, block.y0, block.x1, block.y1).boundary
    assert len(raw) == len(simple) >= 3
    for r, s in zip(raw, simple):
        on_border = shapely.intersection(r.geom.boundary, border)
        assert on_border.length > 0 and shapely.equals(shapely.intersection(s.geom.boundary, border), on_border)
        assert shapely.get_num_coordinates(s.geom) < shapely.get_num_coordinates(shapely.segmentize(r.geom, 1.0))
    done, edges = split_at_edges(simple, block, (300, 300))
    assert done == [] and len(edges) == len(simple)


def test_the_bundled_model_on_real_imagery_gives_no_overlapping_neighbours(tmp_path):
    """Dense Kampala buildings, blocks of one window: before outlines were simplified as a coverage, 12 of the 24
    pairs of touching buildings here overlapped by over 0.1 m², up to 0.53 m²."""
    from fpn_geo.pipeline import load_segmenter
    from tests.doubles import KAMPALA_Z20, REPO

    seg = load_segmenter(REPO / "models" / "default.safetensors", "cpu")
    cfg = load_config(window=256, overlap=32, probability="none", block_windows=1)
    segment(str(KAMPALA_Z20), seg, tmp_path / "k.gpkg", cfg)
    got = gpd.read_file(tmp_path / "k.gpkg", layer="buildings")
    got = got.to_crs(got.estimate_utm_crs())
    touching, overlapping = overlapping_pairs(got.geometry.values, 1e-6)
    assert touching >= 15 and overlapping == 0
