"""Step 3 of a scene's path: take block results in any order, join the buildings cut by block edges, stream
buildings into the GeoPackage, assemble the probability COG, and write provenance, all atomically.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fpn_geo.blocks import BlockResult
from fpn_geo.disk_full import disk_full_as_one_line, output_bytes_estimate
from fpn_geo.errors import FpnGeoError
from fpn_geo.geopackage import GeoPackageWriter, write_errors
from fpn_geo.hashing import BackgroundSha256
from fpn_geo.outputs import PendingOutput, SceneOutputs, scene_outputs, scratch_space, verify_raster
from fpn_geo.plan import ScenePlan
from fpn_geo.probability import assemble_cog, write_probability_style, write_tile
from fpn_geo.provenance import build_record, hashable_scene, new_run_id, utc_now
from fpn_geo.signals import interrupts_deferred
from fpn_geo.tiling import Block
from fpn_geo.timing import StageTimes
from fpn_geo.vectorize import EdgeJoiner, to_buildings

log = logging.getLogger("fpn_geo")


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


class SceneWriter:
    """Takes block results in any order and writes them in block order, so every run gives the same file.

    Holds the results that arrived early and the open edge pieces of one row of blocks; buildings go to the
    GeoPackage as soon as they are complete. Nothing appears at `out` until `finish()` succeeds.
    """

    def __init__(
        self, plan: ScenePlan, out: str | Path | SceneOutputs, probability_out: str | Path | None = None
    ) -> None:
        """`out`: the GeoPackage's path (then the paths are checked here, `scene_outputs`), or outputs the caller
        checked already (the CLI checks them before the model loads)."""
        self.plan = plan
        want_cog = plan.cfg.probability == "cog"
        if not isinstance(out, SceneOutputs):
            inputs: dict[str, str | Path | None] = {"scene": plan.scene.path, "checkpoint": plan.checkpoint_path}
            out = scene_outputs(inputs, out, probability_out, want_cog)
        if (out.probability is not None) != want_cog:
            raise FpnGeoError(f"probability: {plan.cfg.probability}, but the outputs checked say {out.probability}")
        self.out = out.out
        self.prob_final = out.probability  # None: no probability COG
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
        self.input_sha256 = BackgroundSha256(plan.scene.path) if hashable_scene(plan.scene.path) else None
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
            if self.prob_final is not None:
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
                    write_probability_style(prob.final)
                self.writer.commit()
        except BaseException:
            if prob is not None:
                prob.discard()
            raise
        return RunSummary(
            record["run_id"], self.out, self.prob_final, len(plan.grid),
            self.nodata, self.writer.count, time.perf_counter() - t0, plan.scene.megapixels, dict(self.times),
            self.bytes_received, self.predicted,
            f"{record['model_name']}, {record['model_selection']}" if record["model_name"] else None,
        )
