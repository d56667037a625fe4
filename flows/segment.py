"""`segment-scene` and `segment-scenes`: the fpn_geo pipeline as Prefect flows on Dask workers.

A scene's path, read top to bottom; each task wraps one step (`fpn_geo.plan`, `fpn_geo.blocks`,
`fpn_geo.scene_writer`):

1. `plan-scene` (in the flow process, no torch): check the scene and the checkpoint's metadata, lay the window
   grid on the model's grid and cut it into blocks (`plan.plan_from_checkpoint`).
2. `process-blocks` (on Dask workers, one task per square group of blocks): read each block's windows from the
   scene itself (halo included), predict, blend, threshold, separate and vectorize there, with the model loaded
   once per worker process (`blocks.process_blocks`). A block sends back polygons and small stats (and a
   compressed probability tile when a COG is wanted), never raw pixels. At most `max_in_flight` tasks are out.
3. The flow feeds the results, in block order, to `scene_writer.SceneWriter`: it joins buildings cut by block edges
   and writes the GeoPackage with provenance and the COG. Same blocks, same bytes: the output has the same
   polygons as `fpn-geo segment` (the CLI) on the same scene and checkpoint.
4. `quicklook` (in the flow process): a PNG of the scene with the polygons drawn; then a summary artifact.

Without a checkpoint, each scene gets the bundled model whose GSD range covers it (`fpn_geo.model.registry`,
the rule `fpn-geo segment` follows), recorded in its provenance.

Run from the command line:  python -m flows.segment scene SCENE [--checkpoint CKPT] --out OUT.gpkg [--dask-address ...]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import State, flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed
from prefect_dask import DaskTaskRunner

from flows.cluster import current_client, describe_workers, gpu_annotation, task_runner
from flows.scenes import artifact_key, output_paths, scene_name
from flows.server import ServerError, temporary_server
from flows.stac_scenes import (
    add_stac_arguments,
    gather_scenes,
    map_part,
    source_of,
    stac_from_args,
    write_scene_stac,
)
from fpn_geo.building_map import build_map
from fpn_geo.config import SegmentConfig, load_config, output_parameters, parse_overrides, with_model_defaults
from fpn_geo.errors import FpnGeoError
from fpn_geo.georef import is_local
from fpn_geo.model.meta import ModelMeta, read_verified_meta
from fpn_geo.model.registry import choose_model
from fpn_geo.pipeline import (
    BlockResult,
    RunSummary,
    ScenePlan,
    SceneWriter,
    default_probability_path,
    plan_from_checkpoint,
    scene_sha256,
)
from fpn_geo.provenance import is_up_to_date, made_with, utc_now
from fpn_geo.signals import Terminated, terminate_as_interrupt
from fpn_geo.stac import StacScene, apply_remote_gdal_options, redact
from fpn_geo.stac_results import is_current, write_results_catalog
from fpn_geo.streaming import in_order
from fpn_geo.tiling import Block

EMBED_QUICKLOOK_BYTES = 400_000


@task(name="plan-scene", cache_policy=NO_CACHE)
def plan_scene_task(scene: str, checkpoint: str | None, cfg: SegmentConfig) -> ScenePlan:
    """Choose the checkpoint (given, else the bundled one for the scene's GSD), check the scene and the
    checkpoint before any worker starts; a bad input fails here, with its reason."""
    choice = choose_model(scene, checkpoint)
    return plan_from_checkpoint(scene, choice.path, cfg, choice.selection)


@task(name="process-blocks", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def process_blocks_task(plan: ScenePlan, blocks: list[Block], checkpoint: str) -> list[BlockResult]:
    """A group of blocks end to end, on a worker. A worker that dies mid-task: Dask reruns it elsewhere."""
    from fpn_geo.pipeline import cached_segmenter, process_blocks

    use_worker_threads()
    if not is_local(plan.scene.path):
        apply_remote_gdal_options()  # this worker reads the scene's windows in place, over HTTP or S3
    segmenter = cached_segmenter(checkpoint, plan.cfg.device, plan.cfg.compile)
    return list(process_blocks(plan, blocks, segmenter))


def use_worker_threads() -> None:
    """Run torch on the threads the cluster gave this worker (OMP_NUM_THREADS in its environment).

    Torch reads OMP_NUM_THREADS once, when imported. A worker that imports torch while it starts (a preload, or
    a main module that imports it, as flows.segment did before the flow side went torch-free) does so before
    Dask's nanny sets the worker's own environment, and keeps the nanny's pre-spawn value of 1 thread
    (measured: 0.9 s a window instead of 0.56 on 2 cores).
    """
    import torch

    n = int(os.environ.get("OMP_NUM_THREADS") or 0)
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


@task(name="quicklook", cache_policy=NO_CACHE)
def quicklook_task(scene: str, gpkg: str, png: str, bands: tuple[int, ...], title: str) -> str:
    """Render the scene's quicklook PNG with its buildings drawn on; returns the PNG path."""
    from fpn_geo.quicklook import render_quicklook

    return str(render_quicklook(scene, gpkg, png, bands, title=title))


def stream_in_order(submit, groups: list, max_in_flight: int):
    """Submit groups of blocks, at most `max_in_flight` not yet consumed, and yield their results in order.

    Block order lets the writer free each row of blocks' edge pieces as soon as the row is joined. If the writer
    fails, the blocks still out are cancelled on the cluster.
    """
    return in_order(submit, groups, max_in_flight, cancel=lambda fut: fut.wrapped_future.cancel())


class Progress:
    """A progress artifact, and a log line every tenth, as blocks complete."""

    def __init__(self, key: str, total: int, logger) -> None:
        self.total, self.done, self.logger = total, 0, logger
        self.last_update, self.last_tenth = 0.0, 0
        # sync_compatible: called from a sync flow it returns the UUID, not a coroutine
        self.id = cast(UUID, create_progress_artifact(progress=0.0, key=key, description=f"blocks done of {total}"))

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last_update >= 1.0 or self.done >= self.total:
            update_progress_artifact(self.id, progress=100.0 * self.done / max(1, self.total))
            self.last_update = now
        tenth = 10 * self.done // max(1, self.total)
        if tenth > self.last_tenth:
            self.logger.info("%d/%d blocks done", self.done, self.total)
            self.last_tenth = tenth


def _summary_markdown(name: str, summary: RunSummary, tasks: int, workers: int, png: str | None) -> str:
    rows = [
        ("scene", name), ("windows", summary.windows), ("windows without data", summary.windows_skipped),
        ("model", summary.model or ""),
        ("buildings", summary.buildings), ("seconds", f"{summary.seconds:.1f}"), ("Mpx/s", f"{summary.mpx_per_s:.2f}"),
        ("process-blocks tasks", tasks), ("Dask workers", workers),
        ("KB received from blocks", f"{summary.bytes_received / 1e3:.0f}"),
        ("output", f"`{summary.out}`"),
    ]
    if summary.probability:
        rows.append(("probability COG", f"`{summary.probability}`"))
    md = [f"# {name}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    if png:
        from fpn_geo.quicklook import embeddable_jpeg

        # Embedded, so the picture shows on any machine that opens the UI (the PNG, ~1 MB, is over the limit).
        data = embeddable_jpeg(png, max_bytes=EMBED_QUICKLOOK_BYTES * 3 // 4 - 2000)  # base64 adds a third
        md += ["", f"![quicklook of {name}](data:image/jpeg;base64,{base64.b64encode(data).decode()})", "",
               f"Full-size quicklook: `{png}`"]
    return "\n".join(md)


# `type: ignore[arg-type]` on task_runner=: prefect types a TaskRunner by its future class, invariantly, so its
# stubs refuse prefect_dask's DaskTaskRunner (futures: PrefectDaskFuture) although prefect accepts it.
@flow(name="segment-scene", task_runner=task_runner(), log_prints=True)  # type: ignore[arg-type]
def segment_scene(
    scene: str,
    out: str,
    checkpoint: str | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    max_in_flight: int | None = None,
    quicklook: bool = True,
    blocks_per_task: int = 2,
) -> dict:
    """One scene to one GeoPackage (and probability COG), the same polygons as `fpn-geo segment`.

    scene: a GeoTIFF path or anything GDAL reads (/vsis3/..., /vsicurl/...); workers read it themselves.
    out: the GeoPackage to write (on the flow's side).
    checkpoint: NAME.safetensors with NAME.json beside it, readable by the workers at the same path; default: the
      bundled checkpoint whose gsd_range_m covers the scene's GSD (models/, or FPN_GEO_MODELS).
    config: YAML config (default configs/segment.yaml); overrides: its keys to change, e.g. {"batch": 32}.
    max_in_flight: process-blocks tasks out at once (default 2 per worker); bounds the flow's memory.
    blocks_per_task: a task runs a square of this many blocks a side (2: 8x8 windows with the default 4x4 blocks);
      windows shared inside it are predicted once, so bigger groups mean fewer halo windows and fewer tasks.
    """
    logger = get_run_logger()
    t0, started = time.perf_counter(), utc_now()
    if not is_local(scene):
        apply_remote_gdal_options()
    cfg = load_config(config, **(overrides or {}))
    plan = plan_scene_task(scene, checkpoint, cfg)
    n_workers, n_gpu = describe_workers(current_client())
    groups = plan.blocks.groups(blocks_per_task)
    limit = max_in_flight or 2 * max(1, n_workers)
    name = scene_name(scene)
    logger.info(
        "%s: %dx%d px, model grid %dx%d, %d windows in %d blocks, %d tasks, %d Dask workers (%d with a GPU), "
        "<=%d in flight", name, plan.scene.width, plan.scene.height, plan.grid.width, plan.grid.height, len(plan.grid),
        len(plan.blocks), len(groups), n_workers, n_gpu, limit,
    )
    progress = Progress(artifact_key("progress", name), len(plan.blocks), logger)

    model = cast(str, plan.checkpoint_path)  # the plan's checkpoint: the given one, or the one chosen

    def submit(group: list[Block]):
        with gpu_annotation(n_gpu > 0):
            return process_blocks_task.submit(plan, group, model)

    with SceneWriter(plan, out) as writer:
        for results in stream_in_order(submit, groups, limit):
            for result in results:
                writer.add(result)
            progress.add(len(results))
        summary = writer.finish(t0, started)
    logger.info("%s: %s", name, summary.line())
    png = None
    if quicklook:
        png = quicklook_task(scene, str(summary.out), str(Path(out).with_suffix(".quicklook.png")), plan.meta.bands,
                             f"{name}: {summary.buildings} buildings")
    create_markdown_artifact(
        _summary_markdown(name, summary, len(groups), n_workers, png), key=artifact_key("segment", name),
        description=f"fpn-geo segment-scene summary for {name}",
    )
    return {
        "scene": scene, "out": str(summary.out), "windows": summary.windows, "buildings": summary.buildings,
        "seconds": round(summary.seconds, 3), "mpx_per_s": round(summary.mpx_per_s, 3), "tasks": len(groups),
        "bytes_received": summary.bytes_received, "windows_predicted": summary.windows_predicted, "quicklook": png,
        "model": summary.model,
    }


def _is_done(
    scene: str, out: Path, checkpoint: str | None, cfg: SegmentConfig, also: list[Path], metas: dict[str, ModelMeta],
    source: StacScene | None = None,
) -> bool:
    """Whether `out` was made from these scene bytes, the checkpoint this scene gets (given or chosen) and the
    output parameters it would run with (that checkpoint's post-processing defaults included). `metas`: the
    checkpoints verified so far, by path, so each is hashed once per run. A catalogued scene (`source`) is
    identified by its STAC item, asset and asset identity (its output item records them) instead of a sha256."""
    if not out.is_file():
        return False
    try:
        path = choose_model(scene, checkpoint).path
        meta = metas[path] = metas.get(path) or read_verified_meta(path)
    except FpnGeoError:  # a scene or checkpoint that fails: its own flow run says why
        return False
    params = output_parameters(with_model_defaults(cfg, meta.postprocess))
    if source is not None:
        return is_current(out, source_of(scene, source, None)) and made_with(out, meta.weights_sha256, params, also)
    return is_up_to_date(out, scene_sha256(scene), meta.weights_sha256, params, also)


@task(name="stac-item", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def stac_item_task(scene: str, out: Path, name: str, source: StacScene | None, cog: Path | None,
                   quicklook: str | None) -> str:
    """The scene's STAC item beside its outputs (footprint from the scene's mask, read at overview size)."""
    return str(write_scene_stac(scene, out, name, source, cog, quicklook))


@flow(name="segment-scenes", task_runner=task_runner(), log_prints=True)  # type: ignore[arg-type]
def segment_scenes(
    scenes: str | list[str] | None = None,
    out_dir: str = "out/buildings",
    checkpoint: str | None = None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    merged: str | None = None,
    merged_crs: str = "EPSG:4326",
    force: bool = False,
    max_in_flight: int | None = None,
    quicklook: bool = True,
    blocks_per_task: int = 2,
    stac: dict[str, Any] | None = None,
) -> State[Any]:
    """Many scenes, one GeoPackage each (out_dir/<stem>.gpkg), each as its own `segment-scene` flow run.

    scenes: a folder, a glob, a manifest (.txt/.csv: one path per line) or a list of paths; or instead
    stac: a STAC source, checked as `fpn_geo.stac.StacSource` (a plain dict here: Prefect cannot rebuild a
      model-typed parameter of a flow loaded from its entrypoint): {"url": API or static catalog, collection or
      ItemCollection, "asset": "visual", "collections", "bbox", "intersects", "datetime", "query", "filter",
      "max_items"}. Each item's asset is read in place (/vsicurl/, /vsis3/), never downloaded, and writes
      out_dir/<item id>.gpkg.
    checkpoint: as in `segment-scene`; without one, each scene gets the bundled model for its GSD.
    A scene whose GeoPackage already holds the same input sha256, checkpoint sha256 and output parameters
    (every config key that changes the output) is skipped (unless force), so a nightly re-run only does new
    work. Probability rasters fpn-geo wrote are never taken as scenes, even when out_dir is the scenes folder.
    A catalogued scene is skipped when its STAC item beside the outputs records the same item, asset and asset
    identity (ETag, size and date, or checksum) and its GeoPackage the same checkpoint and output parameters.
    Each finished scene gets out_dir/<name>.item.json (STAC), and out_dir/catalog.json lists them all.
    merged: also write one building map (`fpn_geo.building_map`) in `merged_crs`: each building once where
    scenes overlap, with its source scene and item, and a `map_scenes` table; a rerun with new scenes only adds
    them. A scene that fails fails its own flow run; the others go on, and this run ends Failed, listing them.
    """
    logger = get_run_logger()
    cfg = load_config(config, **(overrides or {}))
    found = gather_scenes(scenes, stac)
    paths, ours = found.paths, found.ours
    if ours:
        logger.info(
            "not segmenting %d fpn-geo output raster(s) found among the scenes: %s", len(ours), ", ".join(ours[:5])
        )
    outs = output_paths(paths, out_dir, found.names)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # One cluster for all scenes: the child runs connect to this run's scheduler, and worker model caches stay warm.
    address = current_client().scheduler.address
    logger.info("%d scenes from %s; Dask scheduler %s", len(paths), redact(str(stac["url"])) if stac else scenes,
                address)
    processed, skipped, failed = [], [], {}
    metas: dict[str, ModelMeta] = {}
    rows: list[dict[str, Any]] = []
    for path in paths:
        out, name, source = outs[path], found.names[path], found.sources.get(path)
        also = [default_probability_path(out)] if cfg.probability == "cog" else []
        if not force and _is_done(path, out, checkpoint, cfg, also, metas, source):
            logger.info("%s: up to date (same input, checkpoint and output parameters), skipped", name)
            skipped.append(path)
            rows.append({"scene": name, "status": "skipped", "buildings": "", "seconds": "", "output": str(out)})
            continue
        child = segment_scene.with_options(
            task_runner=DaskTaskRunner(address=address),  # type: ignore[arg-type]
            flow_run_name=f"segment-scene-{name}",
        )
        state = child(
            scene=path, checkpoint=checkpoint, out=str(out), config=config, overrides=overrides,
            max_in_flight=max_in_flight, quicklook=quicklook, blocks_per_task=blocks_per_task, return_state=True,
        )
        if state.is_completed():
            r = state.result()
            stac_item_task(path, out, name, source, also[0] if also else None, r.get("quicklook"))
            processed.append(path)
            rows.append({"scene": name, "status": "done", "buildings": r["buildings"], "seconds": r["seconds"],
                         "output": str(out)})
        else:
            failed[path] = redact(state.message or state.name or "failed")
            logger.error("%s failed: %s", name, failed[path])
            rows.append({"scene": name, "status": "failed", "buildings": "", "seconds": "", "output": failed[path]})
    catalog = write_results_catalog(out_dir) if processed or skipped else None
    merged_count, merged_added = None, None
    if merged:
        parts = [map_part(found.names[p], outs[p], found.sources.get(p)) for p in paths
                 if p not in failed and outs[p].is_file()]
        summary = build_map(parts, merged, merged_crs)
        merged_count, merged_added = summary.buildings, list(summary.added)
        logger.info("building map %s: %d buildings from %d scenes (%d added now, %d kept from the last map)",
                    merged, merged_count, len(parts), len(summary.added), len(summary.reused))
    create_table_artifact(
        rows, key=artifact_key("segment-scenes"), description="fpn-geo segment-scenes: one row per scene"
    )
    result = {
        "processed": processed,
        "skipped": skipped,
        "failed": failed,
        "outputs": {p: str(outs[p]) for p in paths if p not in failed},
        "merged": merged,
        "merged_buildings": merged_count,
        "merged_added": merged_added,
        "catalog": str(catalog) if catalog else None,
    }
    if failed:
        listing = "; ".join(f"{found.names[p]}: {m}" for p, m in failed.items())
        return Failed(message=f"{len(failed)} of {len(paths)} scenes failed: {listing}", data=result)
    return Completed(message=f"{len(processed)} processed, {len(skipped)} up to date", data=result)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.segment scene|scenes ...``: run a flow once here, without a deployment; the exit code."""
    p = argparse.ArgumentParser(prog="python -m flows.segment", description="Run the fpn-geo flows once, here.")
    p.add_argument(
        "--dask-address",
        help="tcp://HOST:8786 of a running scheduler (default: FPN_GEO_DASK_ADDRESS, else a local cluster)",
    )
    p.add_argument("--dask-workers", type=int, help="workers of the local cluster")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, YAML value")
    p.add_argument("--max-in-flight", type=int)
    p.add_argument("--blocks-per-task", type=int, default=2, help="a task runs a square of this many blocks a side")
    p.add_argument("--no-quicklook", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    one = sub.add_parser("scene")
    one.add_argument("scene")
    one.add_argument("--checkpoint", help="default: the bundled model for the scene's GSD (models/, FPN_GEO_MODELS)")
    one.add_argument("--out", required=True)
    many = sub.add_parser("scenes")
    many.add_argument("scenes", nargs="?", help="folder, glob or manifest (or a STAC source: --stac)")
    many.add_argument("--checkpoint", help="default: each scene's bundled model for its GSD")
    many.add_argument("--out-dir", required=True)
    many.add_argument("--merged")
    many.add_argument("--force", action="store_true")
    add_stac_arguments(many)
    args = p.parse_args(argv)
    try:
        stac = stac_from_args(args) if args.command == "scenes" else None
    except FpnGeoError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.set) or None
    except FpnGeoError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    common = dict(
        config=args.config,
        overrides=overrides,
        max_in_flight=args.max_in_flight,
        quicklook=not args.no_quicklook,
        blocks_per_task=args.blocks_per_task,
    )
    runner = task_runner(args.dask_address, args.dask_workers)
    terminate_as_interrupt()  # SIGTERM (timeout, docker stop) unwinds like Ctrl-C: clusters and servers stop
    state: State[Any]
    try:
        with temporary_server():
            if args.command == "scene":
                state = segment_scene.with_options(task_runner=runner)(  # type: ignore[arg-type]
                    scene=args.scene, checkpoint=args.checkpoint, out=args.out, return_state=True, **common)
            else:
                state = segment_scenes.with_options(task_runner=runner)(  # type: ignore[arg-type]
                    scenes=args.scenes, checkpoint=args.checkpoint, out_dir=args.out_dir, merged=args.merged,
                    force=args.force, stac=stac.model_dump(exclude_none=True) if stac else None, return_state=True,
                    **common)
    except KeyboardInterrupt as e:
        print(f"{'terminated' if isinstance(e, Terminated) else 'interrupted'}; no output written", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except ServerError as e:  # no flow ran: nothing to report but why
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    if not state.is_completed():
        print(f"{state.name}: {redact(state.message or '')}", file=sys.stderr)
        return 1
    print(json.dumps(state.result(), indent=1, default=str))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
