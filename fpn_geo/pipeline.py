"""One scene in, a building GeoPackage (and probability COG) out, in three steps that both callers share:

1. `plan_scene`: check the scene and the checkpoint's metadata, lay the window grid on the model's grid (the
   scene resampled to the model's GSD) and cut it into blocks. No pixels.
2. `process_blocks`: per block, read its windows (halo included), predict, blend, threshold, separate
   instances and trace polygons, on the model's grid, where the pixels are. A block returns its finished
   buildings, its edge pieces and (optionally) its probabilities as a small compressed tile: polygons, not pixels.
3. `SceneWriter`: join edge pieces across block edges, stream buildings into the GeoPackage, assemble the COG,
   and write provenance, all atomically.

`segment()` runs the three in this process (the CLI); the Prefect flows run step 2 on Dask workers.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import geopandas as gpd
import numpy as np
import rasterio
import shapely

from fpn_geo.config import SegmentConfig, clamp_window, with_model_defaults
from fpn_geo.device import post_threads
from fpn_geo.disk_full import disk_full_as_one_line, output_bytes_estimate
from fpn_geo.errors import FpnGeoError
from fpn_geo.geopackage import GeoPackageWriter, write_errors
from fpn_geo.georef import Georef, is_local, model_scale, scaled_shape
from fpn_geo.hashing import BackgroundSha256, sha256_file
from fpn_geo.model.meta import ModelMeta, read_verified_meta
from fpn_geo.outputs import PendingOutput, check_output_paths, scratch_space, sweep_output_folders, verify_raster
from fpn_geo.probability import assemble_cog, encode_tile, write_probability_style, write_tile
from fpn_geo.provenance import build_record, new_run_id, utc_now
from fpn_geo.radiometry import IDENTITY, Radiometry, resolve_radiometry
from fpn_geo.scene import SceneInfo, open_scene
from fpn_geo.signals import die_with_parent, interrupts_deferred
from fpn_geo.streaming import in_order
from fpn_geo.tiling import Block, BlockLayout, Grid, GridWindow, make_blocks, make_grid
from fpn_geo.timing import StageTimes
from fpn_geo.vectorize import EdgeJoiner, Piece, split_at_edges, to_buildings, trace_pieces

if TYPE_CHECKING:
    import torch

    from fpn_geo.predictor import Predictor

# torch is imported only where a model runs (load_segmenter, process_blocks): the flow side, which plans and
# writes, starts about 4 s sooner without it.

log = logging.getLogger("fpn_geo")


@dataclass(frozen=True)
class Segmenter:
    """A predictor and the checkpoint metadata that says how to feed it."""

    predictor: Predictor
    meta: ModelMeta
    checkpoint_path: str | None = None
    device: str = "cpu"


def load_segmenter(checkpoint: str | Path, device: str = "auto", compile: bool = False) -> Segmenter:
    """The checkpoint's model as a ``Segmenter`` on ``device`` (auto: CUDA when there is one)."""
    from fpn_geo.device import resolve_device
    from fpn_geo.model.checkpoint import load_checkpoint
    from fpn_geo.predictor import SegmenterPredictor

    model, meta = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    return Segmenter(SegmenterPredictor(model, meta, dev, compile), meta, str(checkpoint), dev)


def cached_segmenter(checkpoint: str | Path, device: str = "auto", compile: bool = False) -> Segmenter:
    """`load_segmenter`, once per process: a worker that runs many blocks loads the model once.

    Keyed by the checkpoint's real path, size and modification time, so a replaced file is reloaded.
    """
    p = Path(checkpoint).resolve()
    st = p.stat() if p.exists() else None
    return _cached_segmenter(str(p), st.st_size if st else -1, st.st_mtime_ns if st else -1, device, compile)


@functools.lru_cache(maxsize=2)
def _cached_segmenter(path: str, size: int, mtime_ns: int, device: str, compile: bool) -> Segmenter:
    log.info("loading checkpoint %s on %s (pid %d)", path, device, os.getpid())
    return load_segmenter(path, device, compile)


# ---------------------------------------------------------------------------------------------------- 1. plan


@dataclass(frozen=True)
class ScenePlan:
    """Everything a block needs besides the model and the pixels; small enough to send to any worker."""

    scene: SceneInfo
    meta: ModelMeta
    cfg: SegmentConfig
    scale: float  # model pixels per scene pixel
    grid: Grid  # windows on the model's grid
    blocks: BlockLayout
    georef: Georef  # the model's grid on the ground
    checkpoint_path: str | None = None
    radiometry: Radiometry = IDENTITY  # the scene's pixel values -> the model's input range
    model_selection: str | None = None  # how the checkpoint was chosen: "explicit" or "auto (...)" (model.registry)

    @property
    def channels(self) -> int:
        return self.meta.channels

    @property
    def separates(self) -> bool:
        """Whether touching buildings are split with the separator channel: the model has it and it is wanted."""
        return self.channels > 1 and self.cfg.separate_touching

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.grid.height, self.grid.width

    def context(self, block: Block) -> Block:
        """The area a block blends and labels: the block and up to one overlap of its neighbours on each side."""
        return self.blocks.context(block, self.grid.overlap)


def plan_scene(
    scene_path: str, meta: ModelMeta, cfg: SegmentConfig, checkpoint_path: str | None = None,
    model_selection: str | None = None,
) -> ScenePlan:
    """Check the scene against the model and lay out the work; a bad input fails here, before any pixel is read.
    The plan's config has the checkpoint's post-processing defaults in the keys the user did not set."""
    cfg = with_model_defaults(cfg, meta.postprocess)
    scene = open_scene(scene_path, meta.bands)
    with rasterio.open(scene.path) as src:
        radiometry = resolve_radiometry(src, meta.bands, meta.input_range, cfg.radiometry)
    scale = model_scale(scene.gsd_m, meta.gsd_m, cfg.match_gsd)
    cfg = clamp_window(cfg, scene.height, scene.width, scale)
    height, width = scaled_shape(scene.height, scene.width, scale)
    grid = make_grid(height, width, cfg.window, cfg.overlap)
    georef = scene.georef().scaled(scale, height, width)
    blocks = make_blocks(grid, cfg.block_windows)
    return ScenePlan(scene, meta, cfg, scale, grid, blocks, georef, checkpoint_path, radiometry, model_selection)


def plan_from_checkpoint(
    scene_path: str, checkpoint: str | Path, cfg: SegmentConfig, model_selection: str | None = None
) -> ScenePlan:
    """`plan_scene` with the checkpoint's metadata, its weights' sha256 checked, without torch or the model."""
    return plan_scene(scene_path, read_verified_meta(checkpoint), cfg, str(checkpoint), model_selection)


# ---------------------------------------------------------------------------------------------------- 2. blocks


@dataclass(frozen=True)
class Buildings:
    """Finished buildings as plain arrays (WKB in the scene's CRS): a few bytes each when pickled, no CRS or frame."""

    wkb: list[bytes]
    score: np.ndarray  # float32
    area_m2: np.ndarray  # float32

    @classmethod
    def from_frame(cls, gdf: gpd.GeoDataFrame) -> Buildings:
        return cls(
            list(shapely.to_wkb(gdf.geometry.values)),
            gdf["score"].to_numpy(np.float32),
            gdf["area_m2"].to_numpy(np.float32),
        )

    def to_frame(self, crs) -> gpd.GeoDataFrame:
        return gpd.GeoDataFrame(
            {"score": self.score, "area_m2": self.area_m2}, geometry=shapely.from_wkb(self.wkb), crs=crs
        )


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


def labels_on_device(cfg: SegmentConfig, device: str) -> bool:
    """Whether blocks are labelled by torch where the model runs (`labelling`: auto means on CUDA)."""
    return cfg.labelling == "device" or (cfg.labelling == "auto" and str(device).startswith("cuda"))


def resamples_on_device(cfg: SegmentConfig, device: str) -> bool:
    """Whether windows go up at the scene's resolution and are resampled where the model runs (`resampling`: auto
    means on CUDA); the scene must allow it too (`fpn_geo.resample_torch.resamples_as_gdal`)."""
    return cfg.resampling == "device" or (cfg.resampling == "auto" and str(device).startswith("cuda"))


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


def label_on_device(plan: ScenePlan, block: Block, probs: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Label the block's context area where its probabilities are (`fpn_geo.instances_gpu`); the block's own labels
    and the context's probabilities, on the host."""
    import torch

    from fpn_geo.instances_gpu import label_instances_torch

    p = torch.as_tensor(probs)
    labels = label_instances_torch(p[0], p[1] if plan.separates else None, plan.cfg.threshold)[_inside(plan, block)]
    return labels.cpu().numpy(), p.cpu().numpy()


def finish_block(
    plan: ScenePlan, block: Block, probs: np.ndarray, want_tile: bool, labels: np.ndarray | None = None,
) -> tuple:
    """Threshold, separate, trace and georeference one blended block (CPU); what a block sends back.

    `probs` covers the block's context area: instances are labelled there, so a building cut by the block's
    edge is split as its neighbour splits it, then only the block's own pixels are traced. `labels`: the block's
    own, when they were made on the device.
    """
    times = StageTimes()
    cfg = plan.cfg
    inside = _inside(plan, block)
    if labels is None:
        with times.time("label"):
            labels = label_block(plan, probs)[inside]
    index = (slice(None), *inside)
    probs = probs[index]
    with times.time("trace"):
        pieces = trace_pieces(labels, probs[0], block, plan.grid_hw, cfg.simplify_m / plan.georef.gsd_m)
    del labels
    finished, edges = split_at_edges(pieces, block, plan.grid_hw)
    with times.time("polygons"):
        buildings = Buildings.from_frame(
            to_buildings(finished, plan.georef, cfg.min_area_m2, cfg.regularize)
        )
    tile = None
    if want_tile:
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
        labels, probs = None, cast(np.ndarray, blended)  # on the host unless labelled on the device
        if on_device:
            with times.time("label"):
                labels, probs = label_on_device(plan, block, blended)
        future = pool.submit(finish_block, plan, block, probs, want_tile, labels)
        return _Finishing(future, block, nodata, predicted, segmenter.device, times)

    with post_pool(plan.cfg.post_workers, threads) as pool:
        if not on_device:
            pool.submit(_import_post_libraries)
        yield from in_order(submit, blocks, threads + 1)


def post_pool(kind: str, workers: int) -> Executor:
    """Where blocks are finished: threads, or spawned processes that die with this one. Tracing and shapely mostly
    release the GIL (two threads traced two blocks 1.4-1.6x faster than one), but the Python work left between
    them does not, so a GPU host with many cores may finish blocks faster in processes. A daemonic process (a Dask
    worker, by default) may not start children: there it is threads, said once in the log."""
    if kind == "processes":
        if not multiprocessing.current_process().daemon:
            return ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent, initargs=(signal.SIGTERM, os.getpid()),
            )
        log.warning("post_workers: processes, but this is a daemonic process (a Dask worker?): using threads; "
                    "start the workers with distributed.worker.daemon: false to allow processes")
    return ThreadPoolExecutor(workers, thread_name_prefix="fpn-geo-post")


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


# ---------------------------------------------------------------------------------------------------- 3. write


@dataclass
class RunSummary:
    """What a finished scene reports: outputs, counts, time and per-stage seconds."""

    run_id: str
    out: Path
    probability: Path | None
    windows: int
    windows_skipped: int
    buildings: int
    seconds: float
    megapixels: float
    times: dict = field(default_factory=dict)
    bytes_received: int = 0  # what the blocks sent back, pickled: what crosses the network in a flow
    windows_predicted: int = 0
    model: str | None = None  # the checkpoint's name and how it was chosen, e.g. "default, explicit"

    @property
    def mpx_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.windows} windows ({self.windows_skipped} nodata), {self.buildings} buildings, "
            f"{self.seconds:.1f} s, {self.mpx_per_s:.2f} Mpx/s" + (f", model {self.model}" if self.model else "")
            + f" -> {self.out}"
        )


def default_probability_path(out: Path) -> Path:
    """Where the probability COG goes by default: NAME.probability.tif beside NAME.gpkg."""
    return out.with_name(out.stem + ".probability.tif")


def _hashable(scene_path: str) -> bool:
    """A local scene's bytes are hashed; remote paths (/vsis3/, s3://...) are not."""
    return is_local(scene_path) and os.path.exists(scene_path)


def scene_sha256(scene_path: str) -> str | None:
    """sha256 of a local scene's bytes; None for remote paths."""
    return sha256_file(scene_path) if _hashable(scene_path) else None


class SceneWriter:
    """Takes block results in any order and writes them in block order, so every run gives the same file.

    Holds the results that arrived early and the open edge pieces of one row of blocks; buildings go to the
    GeoPackage as soon as they are complete. Nothing appears at `out` until `finish()` succeeds.
    """

    def __init__(self, plan: ScenePlan, out: str | Path, probability_out: str | Path | None = None) -> None:
        self.plan = plan
        self.out = Path(out)
        self.prob_final = Path(probability_out) if probability_out else default_probability_path(self.out)
        want_cog = plan.cfg.probability == "cog"
        check_output_paths(
            {"scene": plan.scene.path, "checkpoint": plan.checkpoint_path},
            {"out": self.out, "probability": self.prob_final if want_cog else None},
            kinds={"out": "gpkg", "probability": "tif"},
        )
        sweep_output_folders([self.out, self.prob_final if want_cog else None])
        self._stack = contextlib.ExitStack()
        self.writer = self._stack.enter_context(GeoPackageWriter(self.out, plan.scene.crs))
        self.scratch = self._stack.enter_context(scratch_space(plan.cfg.scratch_dir)) if want_cog else None
        self.tiles: list[tuple[Block, Path]] = []
        self.joiner = EdgeJoiner(plan.grid_hw)
        self.pending: dict[tuple[int, int], BlockResult] = {}
        self.next_row = 0
        self.times = StageTimes()
        self.nodata = 0
        self.predicted = 0
        self.bytes_received = 0
        self.devices: set[str] = set()
        # Started last, once nothing here can fail: close() stops it.
        self.input_sha256 = BackgroundSha256(plan.scene.path) if _hashable(plan.scene.path) else None
        if self.input_sha256 is not None:
            self._stack.callback(self.input_sha256.cancel)

    def __enter__(self) -> SceneWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove whatever was not committed: the temporary GeoPackage, the tiles."""
        self._stack.close()

    def add(self, result: BlockResult) -> None:
        b = result.block
        self.bytes_received += result.wire_bytes
        self.pending[(b.row, b.col)] = result
        layout = self.plan.blocks
        while self.next_row < layout.rows and all((self.next_row, c) in self.pending for c in range(layout.cols)):
            self._write_row([self.pending.pop((self.next_row, c)) for c in range(layout.cols)])
            self.next_row += 1

    def _write_row(self, row: list[BlockResult]) -> None:
        cfg = self.plan.cfg
        for r in row:
            self.times.add(r.times)
            self.nodata += r.windows_nodata
            self.predicted += r.windows_predicted
            self.devices.add(r.device)
            with self.times.time("write"):
                self.writer.append(r.buildings.to_frame(self.plan.scene.crs))
                if r.tile is not None:
                    assert self.scratch is not None  # tiles come only with probability: cog, which makes it
                    self.tiles.append((r.block, write_tile(r.tile, self.scratch, r.block)))
        with self.times.time("join"):
            done = self.joiner.add_row([p for r in row for p in r.edges], row[0].block.y1)
            buildings = to_buildings(done, self.plan.georef, cfg.min_area_m2, cfg.regularize)
        with self.times.time("write"):
            self.writer.append(buildings)

    def _output_bytes(self) -> int:
        """About what the outputs take on disk (`disk_full.output_bytes_estimate`), for a disk-full message."""
        tiles = sum(path.stat().st_size for _, path in self.tiles if path.exists())
        return output_bytes_estimate(self.writer.count, tiles)

    def finish(self, t0: float, started: str) -> RunSummary:
        plan, cfg = self.plan, self.plan.cfg
        if self.next_row != plan.blocks.rows:
            raise FpnGeoError(f"{self.next_row} of {plan.blocks.rows} rows of blocks arrived: blocks are missing")
        with self.times.time("join"):
            buildings = to_buildings(self.joiner.finish(), plan.georef, cfg.min_area_m2, cfg.regularize)
        self.writer.append(buildings)
        if self.nodata == len(plan.grid):
            log.warning("scene %s holds no valid pixels (all nodata): writing an empty GeoPackage", plan.scene.path)
        prob = None
        try:
            if cfg.probability == "cog":
                native = plan.scene.georef() if cfg.probability_grid == "native" and plan.scale != 1.0 else None
                target = native or plan.georef
                verify = functools.partial(verify_raster, width=target.width, height=target.height, count=plan.channels)
                prob = PendingOutput(self.prob_final, verify)
                with disk_full_as_one_line(self.prob_final.parent, self._output_bytes):
                    with self.times.time("cog"), write_errors(self.prob_final):
                        assemble_cog(self.tiles, plan.georef, plan.channels, prob.tmp, native)
                    verify(prob.tmp)  # GDAL may only warn when the disk fills up: read it back
            with self.times.time("hash"):  # what is left of it: it has run beside the blocks
                scene_sha = self.input_sha256.result() if self.input_sha256 is not None else None
            seconds = time.perf_counter() - t0
            g = plan.grid
            record = build_record(
                run_id=new_run_id(), started=started, finished=utc_now(), scene=plan.scene, scene_sha256=scene_sha,
                checkpoint_path=plan.checkpoint_path, meta=plan.meta, model_selection=plan.model_selection,
                parameters={**cfg.model_dump(mode="json"), "scale_to_model_gsd": plan.scale,
                            "model_grid": [g.height, g.width], "blocks": [plan.blocks.rows, plan.blocks.cols]},
                device=",".join(sorted(self.devices)) or "none",
                results={"windows": len(g), "windows_nodata": self.nodata, "buildings": self.writer.count,
                         "seconds": round(seconds, 3)},
            )
            with disk_full_as_one_line(self.out.parent, self._output_bytes):
                self.writer.finish(record)  # written and verified, not yet in place
            with interrupts_deferred():  # both outputs appear, or neither
                if prob is not None:
                    prob.commit(verify=False)
                    write_probability_style(self.prob_final)
                self.writer.commit()
        except BaseException:
            if prob is not None:
                prob.discard()
            raise
        return RunSummary(
            record["run_id"], self.out, self.prob_final if cfg.probability == "cog" else None, len(plan.grid),
            self.nodata, self.writer.count, time.perf_counter() - t0, plan.scene.megapixels, dict(self.times),
            self.bytes_received, self.predicted,
            f"{record['model_name']}, {record['model_selection']}" if record["model_name"] else None,
        )


def segment(
    scene_path: str,
    segmenter: Segmenter,
    out: str | Path,
    cfg: SegmentConfig,
    probability_out: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    plan: ScenePlan | None = None,
) -> RunSummary:
    """Plan (unless the caller did: `plan`), process every block here, write. Nothing appears at `out` unless the
    run succeeds."""
    t0, started = time.perf_counter(), utc_now()
    plan = plan or plan_scene(scene_path, segmenter.meta, cfg, segmenter.checkpoint_path)
    if on_start:
        on_start(len(plan.grid))
    with SceneWriter(plan, out, probability_out) as writer:
        for result in process_blocks(plan, plan.blocks, segmenter, on_batch):
            writer.add(result)
        return writer.finish(t0, started)
