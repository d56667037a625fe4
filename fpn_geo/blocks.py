"""Step 2 of a scene's path: per block, read its windows (halo included), predict, blend, threshold, separate
instances and trace polygons, on the model's grid, where the pixels are. A block returns its finished buildings,
its edge pieces and (optionally) its probabilities as a small compressed tile: polygons, not pixels.

`process_blocks` runs in the CLI's process (`pipeline.segment`) and on the flows' Dask workers. torch is imported
only where a model runs, so the flow side, which plans and writes, starts without it.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np

from fpn_geo.device import labels_on_device, post_pool, post_threads, resamples_on_device
from fpn_geo.errors import FpnGeoError
from fpn_geo.plan import ScenePlan
from fpn_geo.probability import encode_tile
from fpn_geo.streaming import in_order
from fpn_geo.tiling import Block, GridWindow
from fpn_geo.timing import StageTimes
from fpn_geo.vectorize import Buildings, Outlines, Piece, block_outlines, pieces_of, split_at_edges, to_buildings

if TYPE_CHECKING:
    import torch

    from fpn_geo.pipeline import Segmenter


@dataclass
class BlockResult:
    """What a block sends back: polygons and small numbers, never raw pixels (the tile is compressed, optional)."""

    block: Block
    buildings: Buildings  # finished buildings, in the scene's CRS
    edges: list[Piece]  # pieces cut by the block's edge, in model-grid pixels, to be joined with the neighbours'
    tile: bytes | None  # the block's probabilities as an LZW GeoTIFF, when a probability COG is wanted
    windows_nodata: int  # windows of this block (by their origin) that held no data
    windows_predicted: int  # windows the model ran on for this block, halo included
    device: str
    times: dict = field(default_factory=dict)
    wire_bytes: int = 0  # its pickled size, measured where it was made: what crosses the network in a flow

    def measure(self) -> BlockResult:
        """Set `wire_bytes` (on the worker, so the one serial writer does not pickle every result again)."""
        self.wire_bytes = len(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        return self


def label_block(plan: ScenePlan, probs: np.ndarray) -> np.ndarray:
    """Instances of the context area on the CPU: the separating watershed when the model has the channel and it
    is wanted, else blobs. scipy and skimage are imported here, in the post worker, not before the model starts."""
    from fpn_geo.instances import label_instances

    return label_instances(probs[0], probs[1] if plan.separates else None, plan.cfg.threshold)


def _import_post_libraries() -> None:
    """The post worker's first job: its imports (about 0.2 s once torch and numpy are in) run while the model
    reads and predicts block 1. skimage loads lazily: importing `skimage.segmentation` is a stub until
    `watershed` is looked up (0.13 s)."""
    importlib.import_module("fpn_geo.instances")
    importlib.import_module("skimage.segmentation").watershed


def _owns(block: Block, window: GridWindow) -> bool:
    return block.y0 <= window.row_off < block.y1 and block.x0 <= window.col_off < block.x1


NOT_CACHED = object()  # HaloCache.take: this window must be predicted (None means: cached, and it held no data)


class HaloCache:
    """The parts of predicted windows that later blocks of the same run will need, so no window is predicted twice.

    Holds only the crops that reach into blocks not yet blended (a window's overlap strip), and drops each
    when used: about one row of blocks' edges.
    """

    def __init__(self, plan: ScenePlan, blocks: list[Block]) -> None:
        self.plan = plan
        self.layout = plan.blocks
        self.todo = {(b.row, b.col) for b in blocks}
        self.crops: dict[tuple, tuple | None] = {}

    def take(self, window: GridWindow, block: Block):
        return self.crops.pop((window.row, window.col, block.row, block.col), NOT_CACHED)

    def keep(self, window: GridWindow, probs: np.ndarray | torch.Tensor | None, block: Block) -> None:
        from fpn_geo.blend import crop

        for other in self.layout.blocks_of(window):
            if other == block or (other.row, other.col) not in self.todo:
                continue
            part = crop(window, probs, self.plan.context(other)) if probs is not None else None
            self.crops[(window.row, window.col, other.row, other.col)] = (_copy(part[0]), part[1]) if part else None

    def done(self, block: Block) -> None:
        self.todo.discard((block.row, block.col))


def _copy(a):
    """A crop that does not keep its whole window alive."""
    return a.copy() if isinstance(a, np.ndarray) else a.clone()


def blend_block(
    plan: ScenePlan, block: Block, segmenter: Segmenter, cache: HaloCache, times: StageTimes,
    on_windows: Callable[[int], None] | None = None, host: bool = True,
) -> tuple[np.ndarray | torch.Tensor, int, int]:
    """The uint8 probabilities (K, h, w) of the block's context area (`plan.context`), its nodata window count and
    the windows predicted. Inside the block they equal the whole-scene blend. `host=False`: left on a CUDA device."""
    from fpn_geo.blend import BlockCanvas, crop
    from fpn_geo.inference import predict_windows

    cfg = plan.cfg
    windows = plan.blocks.windows(block)
    area = plan.context(block)
    cached = {w: cache.take(w, block) for w in windows}
    todo = [w for w in windows if cached[w] is NOT_CACHED]
    predicted = predict_windows(
        plan.scene.path, todo, plan.meta.bands, segmenter.predictor, cfg.window, plan.scale, cfg.batch, times,
        readers=cfg.readers, grid_hw=plan.grid_hw, radiometry=plan.radiometry,
        resample=resamples_on_device(cfg, segmenter.device),
    )
    canvas = BlockCanvas(area, plan.channels, plan.grid, *plan.blocks.window_ranges(block), segmenter.device)
    nodata = 0
    for w in windows:
        part = cached[w]
        if part is NOT_CACHED:
            w2, probs = next(predicted)
            if w2 != w:
                raise FpnGeoError(f"window {w2} came back where {w} was expected")
            nodata += probs is None and _owns(block, w)
            cache.keep(w, probs, block)
            part = crop(w, probs, area) if probs is not None else None
        if part is not None:
            with times.time("blend"):
                canvas.add(w, *part)
    if on_windows:
        on_windows(sum(_owns(block, w) for w in windows))
    with times.time("blend"):
        probs = canvas.finish(host)
    cache.done(block)
    return probs, nodata, len(todo)


def _inside(plan: ScenePlan, block: Block) -> tuple[slice, slice]:
    """The block's own pixels within its context area."""
    area = plan.context(block)
    return slice(block.y0 - area.y0, block.y1 - area.y0), slice(block.x0 - area.x0, block.x1 - area.x0)


def _simplify_px(plan: ScenePlan) -> float:
    """The outline simplification tolerance on the model's grid."""
    return plan.cfg.simplify_m / plan.georef.gsd_m


def outline_on_device(
    plan: ScenePlan, block: Block, probs: np.ndarray | torch.Tensor, want_tile: bool, times: StageTimes
) -> tuple[Outlines, np.ndarray | None]:
    """Label the block's context area and reduce its own labels to outlines where its probabilities are
    (`fpn_geo.instances_gpu`, `fpn_geo.trace_torch`): only ring corners and small arrays come to the host, plus
    the block's own probabilities when a probability COG wants them."""
    import torch

    from fpn_geo.instances_gpu import label_instances_torch
    from fpn_geo.trace_torch import block_outlines_torch

    p = torch.as_tensor(probs)
    inside = _inside(plan, block)
    with times.time("label"):
        labels = label_instances_torch(p[0], p[1] if plan.separates else None, plan.cfg.threshold)[inside]
    with times.time("trace"):
        outlines = block_outlines_torch(labels, p[0][inside], _simplify_px(plan) > 0)
    own = (slice(None), *inside)
    return outlines, p[own].cpu().numpy() if want_tile else None


def finish_block(
    plan: ScenePlan, block: Block, probs: np.ndarray | None, want_tile: bool, outlines: Outlines | None = None,
) -> tuple:
    """Threshold, separate, trace and georeference one blended block (CPU); what a block sends back.

    `probs` covers the block's context area: instances are labelled there, so a building cut by the block's
    edge is split as its neighbour splits it, then only the block's own pixels are traced. `outlines`: the
    block's own, when they were made on the device; `probs` is then only the block's own, for the tile, if any.
    """
    times = StageTimes()
    cfg = plan.cfg
    if outlines is None:
        assert probs is not None
        inside = _inside(plan, block)
        with times.time("label"):
            labels = label_block(plan, probs)[inside]
        own = (slice(None), *inside)
        probs = probs[own]
        with times.time("trace"):
            outlines = block_outlines(labels, probs[0], _simplify_px(plan) > 0)
        del labels
    with times.time("trace"):
        pieces = pieces_of(outlines, block, plan.grid_hw, _simplify_px(plan))
    finished, edges = split_at_edges(pieces, block, plan.grid_hw)
    with times.time("polygons"):
        buildings = Buildings.from_frame(
            to_buildings(finished, plan.georef, cfg.min_area_m2, cfg.regularize)
        )
    tile = None
    if want_tile and probs is not None:
        with times.time("encode"):
            tile = encode_tile(np.ascontiguousarray(probs), block, plan.georef)
    return buildings, edges, tile, times


def process_blocks(
    plan: ScenePlan, blocks: Iterable[Block], segmenter: Segmenter, on_windows: Callable[[int], None] | None = None
) -> Iterator[BlockResult]:
    """Run blocks end to end, in order. The model blends block k+1 while post-processing threads finish block k,
    so on a GPU neither waits; a window shared by two of these blocks is predicted once."""
    blocks = list(blocks)
    cache = HaloCache(plan, blocks)
    want_tile = plan.cfg.probability == "cog"
    threads = post_threads(plan.cfg.post_threads, segmenter.device)
    on_device = labels_on_device(plan.cfg, segmenter.device)

    def submit(block: Block) -> _Finishing:
        times = StageTimes()
        blended, nodata, predicted = blend_block(plan, block, segmenter, cache, times, on_windows, host=not on_device)
        outlines: Outlines | None = None
        probs: np.ndarray | None = cast(np.ndarray, blended)  # on the host unless labelled on the device
        if on_device:
            outlines, probs = outline_on_device(plan, block, blended, want_tile, times)
        future = pool.submit(finish_block, plan, block, probs, want_tile, outlines)
        return _Finishing(future, block, nodata, predicted, segmenter.device, times)

    with post_pool(plan.cfg.post_workers, threads) as pool:
        if not on_device:
            pool.submit(_import_post_libraries)
        yield from in_order(submit, blocks, threads + 1)


@dataclass
class _Finishing:
    """A block being finished in the pool: `result()` is its `BlockResult`, measured for the wire."""

    future: Future
    block: Block
    nodata: int
    predicted: int
    device: str
    times: StageTimes

    def result(self) -> BlockResult:
        buildings, edges, tile, post_times = self.future.result()
        times = dict(StageTimes(self.times).add(post_times))
        result = BlockResult(self.block, buildings, edges, tile, self.nodata, self.predicted, self.device, times)
        return result.measure()

    def cancel(self) -> bool:
        return self.future.cancel()
