import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin

from fpn_geo.separate import label_instances
from fpn_geo.vectorize import connected_components, polygonize, vectorize_workers


def _probability_raster(path, seed=0):
    """Blobs of many sizes, many crossing strip cuts, and a contact line through some of them."""
    rng = np.random.default_rng(seed)
    fp = np.zeros((700, 300), np.uint8)
    for _ in range(120):
        y, x = rng.integers(0, 690), rng.integers(0, 290)
        h, w = rng.integers(3, 90), rng.integers(3, 40)
        fp[y:y + h, x:x + w] = rng.integers(140, 255)
    contact = np.zeros_like(fp)
    contact[:, 150] = 200
    with rasterio.open(path, "w", driver="GTiff", width=300, height=700, count=2, dtype="uint8",
                       crs="EPSG:32636", transform=from_origin(500000, 700, 1, 1)) as dst:
        dst.write(np.stack([fp, contact]))
    return path


def test_strips_vectorized_in_processes_give_the_same_pieces_in_the_same_order(tmp_path):
    path = str(_probability_raster(tmp_path / "p.tif"))
    for labeler in (connected_components, label_instances):
        one = [p for batch in polygonize(path, 0.5, 64, labeler, workers=1) for p in batch]
        many = [p for batch in polygonize(path, 0.5, 64, labeler, workers=2) for p in batch]
        assert len(one) == len(many) > 20
        assert all(shapely.equals_exact(a.geom, b.geom, 0) for a, b in zip(one, many))
        assert [(a.psum, a.count) for a in one] == [(b.psum, b.count) for b in many]
        # buildings cut by the 64-row strips were joined back across the cuts
        assert max(shapely.bounds(p.geom)[3] - shapely.bounds(p.geom)[1] for p in one) > 64


def test_processes_only_where_they_pay():
    assert vectorize_workers(3, 100, 100) == 3
    assert vectorize_workers(0, 1000, 1000) == 1
    assert vectorize_workers(0, 8192, 8192) >= 1
