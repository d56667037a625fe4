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
