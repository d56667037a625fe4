"""Sources at the model's GSD and chips cut from them.

``load_source`` reads one labelled scene the way the segment pipeline reads scene windows
(same CRS, bilinear resampling to the model GSD), and burns its labels onto that grid as the
3-class target. ``ChipDataset`` turns a ``ChipQuery`` from a sampler into a sample dict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import torch
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling

from fpn_geo.errors import InputError
from fpn_geo.georef import model_scale, pixel_size_m, scaled_shape
from fpn_geo.scene import open_scene
from fpn_geo.train.samplers import ChipQuery, PixelBox, fraction_block
from fpn_geo.train.targets import IGNORE, target_from_instances
from fpn_geo.truth import rasterize_instances, read_label_mask, read_labels

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Source:
    """One scene resampled to the model GSD, with its target and truth polygons, held in memory.

    Small scenes only: the open training samples here are a few megapixels at 0.3 m.
    """

    name: str
    path: str
    image: np.ndarray  # (bands, H, W), source dtype
    target: np.ndarray  # (H, W) uint8: 0 background, 1 building (interior), 2 contact or separator, 255 ignore
    footprint: np.ndarray  # (H, W) bool: truth building pixels (for pixel IoU)
    transform: Affine  # of the resampled grid, in the source CRS
    crs_wkt: str
    gsd_m: float  # of the resampled grid
    truth: gpd.GeoDataFrame | None  # polygons in the source CRS (None for mask labels)
    weight: float
    val_block: PixelBox | None  # in resampled pixels

    @property
    def shape(self) -> tuple[int, int]:
        return self.target.shape

    @property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)


def block_pixels(fractions: tuple[float, float, float, float] | None, height: int, width: int) -> PixelBox | None:
    """A fractional (left, top, right, bottom) block in pixels, rounded outwards (``samplers.fraction_block``)."""
    if fractions is None:
        return None
    block = fraction_block(fractions, height, width)
    if block.height <= 0 or block.width <= 0:
        raise InputError(f"val_block {list(fractions)} covers no pixels of a {height}x{width} grid; make it larger")
    return block


def load_source(
    name: str,
    image_path: Path,
    label_path: Path,
    kind: str,
    gsd_m: float,
    bands: tuple[int, ...],
    contact_px: int = 2,
    weight: float = 1.0,
    val_block: tuple[float, float, float, float] | None = None,
    target_kind: str = "contact",
) -> Source:
    """Read a scene at ``gsd_m`` (bilinear, in its own CRS, as the pipeline does) and rasterize its labels."""
    scene = open_scene(str(image_path), bands)  # the product's checks: CRS, geotransform, bands, dtype, truncation
    h, w = scaled_shape(scene.height, scene.width, model_scale(scene.gsd_m, gsd_m))
    with rasterio.open(image_path) as src:
        image = src.read(list(bands), out_shape=(len(bands), h, w), resampling=Resampling.bilinear)
        valid = src.dataset_mask(out_shape=(h, w), resampling=Resampling.nearest) > 0
        transform = src.transform * Affine.scale(src.width / w, src.height / h)
        crs = src.crs
        src_shape = (src.height, src.width)
    truth = None
    if kind == "labels":
        truth = read_labels(label_path, crs)
        instances = rasterize_instances(truth, transform, (h, w))
    else:
        from scipy import ndimage

        mask, mask_transform, mask_crs = read_label_mask(label_path)
        if mask.shape != src_shape:
            raise InputError(
                f"mask {label_path} is {mask.shape}, image {image_path} is {src_shape}; they must share a grid"
            )
        rows = np.minimum(((np.arange(h) + 0.5) * src_shape[0] / h).astype(int), src_shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * src_shape[1] / w).astype(int), src_shape[1] - 1)
        mask = mask[rows][:, cols]  # nearest neighbour at pixel centres
        instances, _ = ndimage.label(mask > 0)  # touching buildings merged in a mask stay one instance
    target = target_from_instances(instances, target_kind, contact_px)
    target[~valid] = IGNORE
    gsd = pixel_size_m(transform, CRS.from_user_input(crs), w, h)
    log.info("source %s: %s -> %dx%d px at %.3f m", name, Path(image_path).name, h, w, gsd)
    return Source(
        name, str(image_path), image, target, instances > 0, transform, crs.to_wkt(), gsd, truth, weight,
        block_pixels(val_block, h, w),
    )


def normalization_stats(sources: list[Source]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std (source digital numbers) over the training pixels, sources weighted like the sampler."""
    means, sqs, weights = [], [], []
    for s in sources:
        keep = s.target != IGNORE
        if s.val_block is not None:
            keep = keep.copy()
            keep[s.val_block.slices] = False
        if not keep.any():
            continue
        px = s.image[:, keep].astype(np.float64)
        means.append(px.mean(axis=1))
        sqs.append((px**2).mean(axis=1))
        weights.append(s.weight)
    if not means:
        raise InputError("no training pixels left outside the validation blocks; shrink val_block")
    w = np.array(weights) / sum(weights)
    mean = np.einsum("s,sb->b", w, np.array(means))
    var = np.einsum("s,sb->b", w, np.array(sqs)) - mean**2
    std = np.sqrt(np.maximum(var, 1e-6))
    return tuple(float(round(m, 4)) for m in mean), tuple(float(round(s, 4)) for s in std)


def crop(source: Source, q: ChipQuery) -> tuple[np.ndarray, np.ndarray]:
    """Image and target of a chip; parts past the edge are mirrored (image) and ignored (target)."""
    h, w = source.shape
    r0, c0 = max(q.row, 0), max(q.col, 0)
    r1, c1 = min(q.row + q.size, h), min(q.col + q.size, w)
    image = source.image[:, r0:r1, c0:c1]
    target = source.target[r0:r1, c0:c1]
    pad = ((r0 - q.row, q.row + q.size - r1), (c0 - q.col, q.col + q.size - c1))
    if any(p for pair in pad for p in pair):
        image = np.pad(image, ((0, 0), *pad), mode="symmetric" if min(image.shape[1:]) > 1 else "edge")
        target = np.pad(target, pad, constant_values=IGNORE)
    return image, target


class ChipDataset(torch.utils.data.Dataset):
    """Map a ChipQuery to ``{"image": float32 (bands, S, S) normalized, "mask": int64 (S, S)}``.

    ``transform`` (e.g. ``augment.Augment``) runs on the float image in digital numbers, before normalization.
    """

    def __init__(self, sources: list[Source], mean: tuple[float, ...], std: tuple[float, ...], transform=None) -> None:
        self.sources = sources
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.transform = transform

    def __getitem__(self, q: ChipQuery) -> dict[str, torch.Tensor]:
        image, target = crop(self.sources[q.source], q)
        image = image.astype(np.float32)
        if self.transform is not None:
            image, target = self.transform(image, target)
        image = (image - self.mean) / self.std
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(np.ascontiguousarray(target).astype(np.int64)),
        }


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of sample dicts into one batch dict."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
