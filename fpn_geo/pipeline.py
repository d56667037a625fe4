"""segment(): one scene in, a building GeoPackage (and probability COG) out. Reads top to bottom:
open, tile, infer, stitch, vectorize, write. The CLI and the Prefect flows both call these steps."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np
import rasterio

from fpn_geo.config import SegmentConfig
from fpn_geo.errors import FpnGeoError, OutputError
from fpn_geo.geopackage import GeoPackageWriter, temp_sibling
from fpn_geo.hashing import sha256_file
from fpn_geo.model.meta import ModelMeta, read_verified_meta
from fpn_geo.provenance import build_record, new_run_id, utc_now
from fpn_geo.scene import SceneInfo, is_local, open_scene
from fpn_geo.separate import separator_index
from fpn_geo.stitch import Stitcher, describe_bands, probability_profile, write_cog, write_probability_style
from fpn_geo.tiling import Grid, GridWindow, make_grid
from fpn_geo.timing import StageTimes
from fpn_geo.vectorize import Labeler, connected_components, local_metric_crs, polygonize, to_buildings, vectorize_workers

if TYPE_CHECKING:
    from fpn_geo.inference import Predictor

# torch is imported only where a model runs (load_segmenter, segment, predict_batch): the flow side, which
# plans and writes, starts about 4 s sooner without it.

log = logging.getLogger("fpn_geo")


@dataclass(frozen=True)
class Segmenter:
    """A predictor with what the pipeline must know about it."""

    predictor: Predictor
    bands: tuple[int, ...]
    channels: int  # 1: footprint; 2: footprint + contact
    gsd_m: float | None = None
    meta: ModelMeta | None = None
    checkpoint_path: str | None = None
    device: str = "cpu"

    @property
    def record(self) -> "ModelRecord":
        return ModelRecord(self.channels, self.bands, self.gsd_m, self.meta, self.checkpoint_path, self.device)


@dataclass(frozen=True)
class ModelRecord:
    """What planning and writing need to know about a model, without its weights: small enough to send anywhere."""

    channels: int
    bands: tuple[int, ...]
    gsd_m: float | None
    meta: ModelMeta | None
    checkpoint_path: str | None
    device: str


def read_model_record(checkpoint: str | Path, device: str = "auto") -> ModelRecord:
    """The checkpoint's metadata with its weights' sha256 checked, without building the model.

    Use on the side that plans and writes (a flow), where the model never runs.
    """
    meta = read_verified_meta(checkpoint)
    channels = 2 if separator_index(meta.classes) is not None else 1
    return ModelRecord(channels, meta.bands, meta.gsd_m, meta, str(checkpoint), device)


def cached_segmenter(checkpoint: str | Path, device: str = "auto", compile: bool = False) -> Segmenter:
    """`load_segmenter`, once per process: a worker that runs many batches loads the model once.

    Keyed by the checkpoint's real path, size and modification time, so a replaced file is reloaded.
    """
    p = Path(checkpoint).resolve()
    st = p.stat() if p.exists() else None
    return _cached_segmenter(str(p), st.st_size if st else -1, st.st_mtime_ns if st else -1, device, compile)


@functools.lru_cache(maxsize=2)
def _cached_segmenter(path: str, size: int, mtime_ns: int, device: str, compile: bool) -> Segmenter:
    log.info("loading checkpoint %s on %s (pid %d)", path, device, os.getpid())
    return load_segmenter(path, device, compile)


def load_segmenter(checkpoint: str | Path, device: str = "auto", compile: bool = False) -> Segmenter:
    from fpn_geo.inference import SegmenterPredictor, resolve_device
    from fpn_geo.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    predictor = SegmenterPredictor(model, meta, dev, compile)
    return Segmenter(predictor, meta.bands, predictor.channels, meta.gsd_m, meta, str(checkpoint), dev)


@dataclass
class RunSummary:
    run_id: str
    out: Path
    probability: Path | None
    windows: int
    windows_skipped: int
    buildings: int
    seconds: float
    megapixels: float
    times: dict = field(default_factory=dict)

    @property
    def mpx_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.windows} windows ({self.windows_skipped} nodata), {self.buildings} buildings, "
            f"{self.seconds:.1f} s, {self.mpx_per_s:.2f} Mpx/s -> {self.out}"
        )


def plan_grid(scene: SceneInfo, cfg: SegmentConfig, model_gsd_m: float | None) -> tuple[Grid, float]:
    """The window grid in scene pixels and the scale (model px per scene px) that brings windows to the model's GSD."""
    scale = 1.0
    if cfg.match_gsd and model_gsd_m:
        scale = scene.gsd_m / model_gsd_m
        if abs(scale - 1.0) < 0.05:
            scale = 1.0
    if scale == 1.0:
        return make_grid(scene.height, scene.width, cfg.window, cfg.overlap), 1.0
    size = max(1, round(cfg.window / scale))
    overlap = min(round(cfg.overlap / scale), size // 2 - 1)
    return make_grid(scene.height, scene.width, size, overlap, align=1), scale


def choose_labeler(channels: int, cfg: SegmentConfig) -> Labeler:
    if channels > 1 and cfg.separate_touching:
        from fpn_geo.separate import label_instances

        return label_instances
    return connected_components


WindowResult = tuple[GridWindow, "np.ndarray | None"]  # probabilities (K, h, w) uint8, or None: all nodata


def stitch_results(
    scene: SceneInfo, grid: Grid, channels: int, results: Iterable[WindowResult], out_path: Path, times: StageTimes
) -> int:
    """Blend window predictions, in any order, into a probability GeoTIFF; returns how many windows held no data."""
    skipped = 0
    with rasterio.open(out_path, "w", **probability_profile(scene, channels)) as dst:
        describe_bands(dst, channels)

        def write(window, data):
            with times.time("stitch"):
                dst.write(data, window=window)

        stitcher = Stitcher(grid, channels, write)
        for window, probs in results:
            skipped += probs is None
            with times.time("stitch"):
                stitcher.add(window, probs)
    if not stitcher.finished:
        raise FpnGeoError(f"stitching ended with {stitcher.next_strip} of {grid.rows} strips complete: windows are missing")
    return skipped


@dataclass(frozen=True)
class BatchResult:
    """What a worker sends back for a slice of the grid: uint8 probabilities, never floats or pixels."""

    start: int
    results: list[WindowResult]
    device: str
    seconds: float
    times: dict


def batch_slices(n_windows: int, per_batch: int, model_batch: int) -> list[tuple[int, int]]:
    """[start, stop) slices of the row-major grid, each a multiple of `model_batch` windows long.

    Aligned to `model_batch`, every model call sees the same windows as in `segment()`, so a distributed
    run gives the same numbers as the single-process one.
    """
    per = max(model_batch, per_batch // model_batch * model_batch)
    return [(s, min(s + per, n_windows)) for s in range(0, n_windows, per)]


def predict_batch(
    scene_path: str, grid: Grid, start: int, stop: int, segmenter: Segmenter, model_size: int, scale: float, batch: int,
    readers: int = 0,
) -> BatchResult:
    """Predict windows [start, stop) of the grid, reading them from `scene_path` here (on the worker)."""
    from fpn_geo.inference import predict_windows

    t0 = time.perf_counter()
    times = StageTimes()
    windows = itertools.islice(iter(grid), start, stop)
    with rasterio.Env():
        results = [
            (w, p) for w, p, _ in predict_windows(
                scene_path, windows, segmenter.bands, segmenter.predictor, model_size, scale, batch, times, readers=readers)
        ]
    return BatchResult(start, results, segmenter.device, time.perf_counter() - t0, dict(times))


def vectorize_to(prob_path: Path, scene: SceneInfo, cfg: SegmentConfig, labeler: Labeler, writer: GeoPackageWriter, times: StageTimes) -> None:
    utm = local_metric_crs(scene)
    workers = vectorize_workers(cfg.vectorize_workers, scene.height, scene.width)
    pieces_iter = polygonize(str(prob_path), cfg.threshold, cfg.strip_rows, labeler, workers)
    while True:
        with times.time("vectorize"):
            pieces = next(pieces_iter, None)
            if pieces is None:
                break
            gdf = to_buildings(pieces, scene, cfg.simplify_m, cfg.min_area_m2, utm)
        with times.time("write"):
            writer.append(gdf)


def default_probability_path(out: Path) -> Path:
    return out.with_name(out.stem + ".probability.tif")


def scene_sha256(scene_path: str) -> str | None:
    """sha256 of a local scene's bytes; None for remote paths (/vsis3/, s3://...), which are not hashed."""
    return sha256_file(scene_path) if is_local(scene_path) and os.path.exists(scene_path) else None


def segment(
    scene_path: str,
    segmenter: Segmenter,
    out: str | Path,
    cfg: SegmentConfig,
    probability_out: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> RunSummary:
    """Run the whole path for one scene. Nothing appears at `out` unless the run succeeds."""
    from fpn_geo.inference import predict_windows

    t0 = time.perf_counter()
    started = utc_now()
    scene = open_scene(scene_path, segmenter.bands)
    grid, scale = plan_grid(scene, cfg, segmenter.gsd_m)
    times = StageTimes()
    if on_start:
        on_start(len(grid))
    results = predict_windows(
        scene.path, grid, segmenter.bands, segmenter.predictor, cfg.window, scale, cfg.batch, times, on_batch,
        readers=cfg.readers,
    )
    return write_scene(
        scene, grid, scale, ((w, p) for w, p, _ in results), segmenter.record, out, cfg, probability_out,
        times=times, t0=t0, started=started,
    )


def write_scene(
    scene: SceneInfo,
    grid: Grid,
    scale: float,
    results: Iterable[WindowResult],
    model: ModelRecord,
    out: str | Path,
    cfg: SegmentConfig,
    probability_out: str | Path | None = None,
    *,
    times: StageTimes | None = None,
    t0: float | None = None,
    started: str | None = None,
    input_sha256: str | None = None,
) -> RunSummary:
    """Stitch window results (consumed as they come, any order), vectorize, and write the GeoPackage with provenance.

    The output folder is checked before the first result is consumed, so a bad `out` fails before any work.
    """
    t0 = t0 if t0 is not None else time.perf_counter()
    started = started or utc_now()
    times = times if times is not None else StageTimes()
    run_id = new_run_id()
    out = Path(out)
    prob_final = Path(probability_out) if probability_out else default_probability_path(out)
    with GeoPackageWriter(out, scene.crs) as writer, rasterio.Env(GDAL_CACHEMAX=cfg.gdal_cache_mb * 1024 * 1024):
        with tempfile.TemporaryDirectory(prefix="fpn-geo-", dir=_scratch_dir(out)) as scratch:
            stitched = Path(scratch) / "probability.tif"
            skipped = stitch_results(scene, grid, model.channels, results, stitched, times)
            if skipped == len(grid):
                log.warning("scene %s holds no valid pixels (all nodata): writing an empty GeoPackage", scene.path)
            vectorize_to(stitched, scene, cfg, choose_labeler(model.channels, cfg), writer, times)
            prob_tmp = None
            if cfg.probability == "cog":
                with times.time("write"):
                    prob_tmp = temp_sibling(prob_final, ".tif")
                    write_cog(str(stitched), str(prob_tmp))
            with times.time("hash"):
                scene_sha = input_sha256 or scene_sha256(scene.path)
        seconds = time.perf_counter() - t0
        record = build_record(
            run_id=run_id, started=started, finished=utc_now(), scene=scene, scene_sha256=scene_sha,
            checkpoint_path=model.checkpoint_path, meta=model.meta,
            parameters={**cfg.model_dump(), "scale_to_model_gsd": scale, "window_scene_px": grid.size},
            device=model.device,
            results={"windows": len(grid), "windows_nodata": skipped, "buildings": writer.count, "seconds": round(seconds, 3)},
        )
        try:
            if prob_tmp is not None:
                os.replace(prob_tmp, prob_final)
                write_probability_style(prob_final)
            writer.commit(record)
        finally:
            if prob_tmp is not None and prob_tmp.exists():
                prob_tmp.unlink()
    return RunSummary(
        run_id, out, prob_final if cfg.probability == "cog" else None, len(grid), skipped, writer.count,
        time.perf_counter() - t0, scene.megapixels, dict(times),
    )


def _scratch_dir(out: Path) -> str | None:
    """Scratch space for the uncompressed stitched raster: FPN_GEO_TMPDIR, else the system temp folder."""
    d = os.environ.get("FPN_GEO_TMPDIR")
    if d and not os.path.isdir(d):
        raise OutputError(f"FPN_GEO_TMPDIR={d} is not a folder")
    return d
