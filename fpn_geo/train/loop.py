"""The training loop: sources -> chips -> model, validated every epoch, checkpointed, resumable.

``train(cfg)`` is what the CLI (``fpn-geo train``) and the Prefect flow ``train-segmenter`` call.
Writes into ``cfg.out_dir``: best.safetensors/.json (best held-out F1), last.safetensors/.json
(+ last.state.* for resuming), metrics.csv (every epoch), curve.png (every 5 epochs and at the end)
and config.yaml.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fpn_geo.device import resolve_device
from fpn_geo.errors import ConfigError
from fpn_geo.hashing import sha256_file
from fpn_geo.model import ModelMeta
from fpn_geo.train.augment import Augment
from fpn_geo.train.config import TrainConfig
from fpn_geo.train.core import (
    autocast,
    check_same_architecture,
    device_name,
    load_init,
    lr_at,
    new_model,
    new_optimizer,
    set_lr,
    set_train_mode,
    train_step,
    with_ledger,
    write_checkpoint,
)
from fpn_geo.train.dataset import ChipDataset, Source, collate, load_source, normalization_stats
from fpn_geo.train.history import append_row, plot_curve, truncate_after
from fpn_geo.train.ledger import ledger_of, recorded_path, run_entry
from fpn_geo.train.losses import CEDiceLoss
from fpn_geo.train.samplers import Extent, RandomChipSampler
from fpn_geo.train.state import load_train_state, save_train_state
from fpn_geo.train.targets import classes_for
from fpn_geo.train.validate import HeldOutBlock, export_blocks, segmenter_from_model, validate_places

log = logging.getLogger("fpn_geo.train")


@dataclass(frozen=True)
class TrainResult:
    """Where ``train`` left its checkpoints, how far it got, and the per-epoch metrics rows."""

    out_dir: Path
    best: Path
    last: Path
    epochs_run: int
    best_score: float
    history: list[dict[str, Any]]
    chips_per_s: float


def load_sources(cfg: TrainConfig, root: Path | None = None) -> list[Source]:
    """Every configured image (globs expanded) at the model GSD, with its labels burnt in."""
    root = cfg.root if root is None else root
    sources = []
    for sc in cfg.sources:
        pairs = sc.pairs(root)
        for k, (img, lab, kind) in enumerate(pairs):
            name = sc.name if len(pairs) == 1 else f"{sc.name}/{img.stem}"
            # a glob's weight is the group's: each member gets its share
            weight = sc.weight / len(pairs)
            sources.append(load_source(
                name, img, lab, kind, cfg.gsd_m, cfg.bands, cfg.contact_px, weight, sc.val_block, cfg.target,
            ))
    return sources


def progress(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """How far the cosine has gone (0 to 1): the planned steps after warmup, or with ``max_minutes`` whichever
    runs out first, steps or wall time, so a run cut short by its time budget still ends at a low rate."""
    total = cfg.epochs * cfg.steps_per_epoch
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.max_minutes:
        t = max(t, elapsed_s / (cfg.max_minutes * 60))
    return t


def score_of(metrics: dict[str, float]) -> float:
    """What 'best' means: the mean over places of held-out F1 with separation (each place counts the same)."""
    return metrics.get("val_mean_place_f1_sep", metrics.get("val_f1_sep", metrics["val_pixel_iou"]))


def _meta(cfg: TrainConfig, mean, std, extra: dict) -> ModelMeta:
    return ModelMeta(
        depth=cfg.depth, bands=tuple(cfg.bands), mean=tuple(mean), std=tuple(std), classes=classes_for(cfg.target),
        gsd_m=cfg.gsd_m, fpn_channels=cfg.fpn_channels, head_channels=cfg.head_channels, extra=extra,
    )


def _same_arch(meta: ModelMeta, cfg: TrainConfig, path: str, key: str) -> None:
    """The checkpoint named by ``key`` (init, resume) is the architecture the config asks for."""
    want = {
        "depth": cfg.depth, "bands": list(cfg.bands), "fpn_channels": cfg.fpn_channels,
        "head_channels": cfg.head_channels, "classes": list(classes_for(cfg.target)),
    }
    check_same_architecture(meta, want, path, flag=key)


def train(
    cfg: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None, root: Path | None = None
) -> TrainResult:
    """Train per ``cfg``; returns where the checkpoints are and the per-epoch history."""
    run = _setup(cfg, cfg.root if root is None else root)
    for epoch in range(run.start_epoch, cfg.epochs + 1):
        row, val = _run_epoch(run, epoch)
        if _end_epoch(run, epoch, row, val, on_epoch):
            break
    if run.history:
        plot_curve(run.metrics_csv, run.out / "curve.png")
    cps = float(np.mean([r["chips_per_s"] for r in run.history])) if run.history else 0.0
    return TrainResult(run.out, run.best_path, run.last_path, len(run.history), run.best_score, run.history, cps)


@dataclass
class _Run:
    """What ``train`` sets up once and its epochs share; ``step``, ``best_score`` and ``history`` move on."""

    cfg: TrainConfig
    root: Path
    out: Path
    device: torch.device
    sources: list[Source]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    loss_fn: CEDiceLoss
    amp: contextlib.AbstractContextManager[Any]
    extents: list[Extent]
    blocks: list[HeldOutBlock]
    record: dict[str, Any]  # the training data, for every checkpoint's metadata
    start_epoch: int
    step: int
    best_score: float
    elapsed_before: float
    t_run: float
    lineage: _Lineage
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def metrics_csv(self) -> Path:
        return self.out / "metrics.csv"

    @property
    def last_path(self) -> Path:
        return self.out / "last.safetensors"

    @property
    def best_path(self) -> Path:
        return self.out / "best.safetensors"

    def elapsed(self) -> float:
        """Training seconds so far, the resumed run's included (what ``max_minutes`` counts)."""
        return self.elapsed_before + time.perf_counter() - self.t_run


def _setup(cfg: TrainConfig, root: Path) -> _Run:
    """Seeds, sources, model and optimizer (fresh, from ``init`` or resumed), held-out blocks, loss."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    out = Path(cfg.out_dir) if Path(cfg.out_dir).is_absolute() else root / cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    sources = load_sources(cfg, root)
    model, mean, std, lineage = _model(cfg, root, sources, device, out / "metrics.csv")
    opt = new_optimizer(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult, cfg.freeze_backbone)
    start_epoch, step, best_score, elapsed_before = 1, 0, -1.0, 0.0
    if cfg.resume:
        start_epoch, step, best_score, elapsed_before = _resume_progress(cfg, opt, root, out / "metrics.csv")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    extents = [Extent(*s.shape, s.val_block, s.weight) for s in sources]
    blocks = export_blocks(cfg, out / "holdout", root)  # cut once; validated through pipeline.segment every epoch
    loss_fn = CEDiceLoss(cfg.class_weights, cfg.dice_weight).to(device)
    record = {"data": [_data_record(s, root) for s in sources]}
    return _Run(
        cfg, root, out, device, sources, tuple(mean), tuple(std), model, opt, loss_fn, autocast(device), extents,
        blocks, record, start_epoch, step, best_score, elapsed_before, t_run=time.perf_counter(), lineage=lineage,
    )


@dataclass(frozen=True)
class _Lineage:
    """What this run's ledger entry continues: the runs before it, the weights it started from, its start date."""

    parent: list[dict[str, Any]]
    init_sha256: str | None
    date: str | None = None


def _model(
    cfg: TrainConfig, root: Path, sources: list[Source], device: torch.device, metrics_csv: Path,
) -> tuple[torch.nn.Module, Sequence[float], Sequence[float], _Lineage]:
    """The model to train, its normalization and lineage: resumed, continued from ``init``, or fresh.

    Resumed and ``init`` runs keep the checkpoint's normalization: the weights were trained with it.
    """
    if cfg.resume:
        init = load_init(_path(cfg.resume, root))
        _same_arch(init.meta, cfg, cfg.resume, "resume")
        *before, this = ledger_of(init.meta.extra) or [{}]  # the last entry is the run being resumed
        lineage = _Lineage(before, this.get("init_sha256"), this.get("date"))
        return new_model(init.meta, device, init.state), init.meta.mean, init.meta.std, lineage
    if cfg.init:
        init = load_init(_path(cfg.init, root))
        _same_arch(init.meta, cfg, cfg.init, "init")
        mean, std = init.meta.mean, init.meta.std
        model = new_model(_meta(cfg, mean, std, {}), device, init.state)
        lineage = _Lineage(ledger_of(init.meta.extra), init.meta.weights_sha256)
    else:
        mean, std = normalization_stats(sources)
        model = new_model(_meta(cfg, mean, std, {}), device)
        lineage = _Lineage([], None)
    metrics_csv.unlink(missing_ok=True)
    return model, mean, std, lineage


def _resume_progress(
    cfg: TrainConfig, opt: torch.optim.Optimizer, root: Path, metrics_csv: Path,
) -> tuple[int, int, float, float]:
    """Restore the optimizer of ``cfg.resume``; its next epoch, step, best score and training seconds so far."""
    assert cfg.resume
    progress = load_train_state(opt, _path(cfg.resume, root))
    start_epoch, step = progress["epoch"] + 1, progress["step"]
    if start_epoch > cfg.epochs:
        raise ConfigError(
            f"{cfg.resume} already finished epoch {progress['epoch']} of epochs={cfg.epochs}; "
            f"raise epochs above {progress['epoch']} to train on"
        )
    truncate_after(metrics_csv, progress["epoch"])
    log.info("resumed from %s at epoch %d, step %d", cfg.resume, start_epoch, step)
    return start_epoch, step, progress["best_score"], progress.get("elapsed_s", 0.0)


def _data_record(s: Source, root: Path) -> dict[str, Any]:
    return {
        "name": s.name, "path": recorded_path(s.path, root), "sha256": sha256_file(s.path), "shape": list(s.shape),
        "gsd_m": round(s.gsd_m, 4), "val_block_px": dataclasses.astuple(s.val_block) if s.val_block else None,
    }


def _run_epoch(run: _Run, epoch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One epoch's training steps, then validation on the held-out blocks: the metrics row and the scores."""
    cfg, device = run.cfg, run.device
    # per-epoch seeds: a resumed run draws the same chips as an uninterrupted one
    sampler = RandomChipSampler(
        run.extents, cfg.chip, cfg.steps_per_epoch * cfg.batch, gap=cfg.chip // 8, seed=cfg.seed * 100003 + epoch
    )
    train_set = ChipDataset(run.sources, run.mean, run.std, Augment(cfg.jitter, seed=cfg.seed * 100003 + epoch))
    queries = list(sampler)
    set_train_mode(run.model, cfg.freeze_backbone)
    sums = {"loss": 0.0, "ce": 0.0, "dice": 0.0}
    lr = float("nan")
    t0 = time.perf_counter()
    for i in range(0, len(queries), cfg.batch):
        batch = collate([train_set[q] for q in queries[i : i + cfg.batch]])
        x, y = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
        if run.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(run.step, progress(run.step, cfg, run.elapsed()), cfg.lr, cfg.warmup_steps)
        set_lr(run.opt, lr)
        loss, parts = train_step(run.model, run.opt, run.loss_fn, x, y, run.amp)
        run.step += 1
        sums["loss"] += float(loss)
        sums["ce"] += float(parts["ce"])
        sums["dice"] += float(parts["dice"])
    train_s = time.perf_counter() - t0
    n_steps = max(1, math.ceil(len(queries) / cfg.batch))
    t1 = time.perf_counter()
    segmenter = segmenter_from_model(run.model, _meta(cfg, run.mean, run.std, {}), str(device))
    val = validate_places(
        segmenter, run.blocks, run.out / "holdout" / "val", cfg.threshold, cfg.min_area_m2, cfg.simplify_m,
        device=str(device),
    )
    row = {
        "epoch": epoch, "step": run.step, "lr": lr, "train_loss": sums["loss"] / n_steps,
        "train_ce": sums["ce"] / n_steps, "train_dice": sums["dice"] / n_steps, "chips": len(queries),
        "chips_per_s": len(queries) / train_s, "train_seconds": train_s, "val_seconds": time.perf_counter() - t1,
        **{k: v for k, v in val.items() if k != "rows"},
    }
    return row, val


def _end_epoch(
    run: _Run, epoch: int, row: dict[str, Any], val: dict[str, Any], on_epoch: Callable[[dict[str, Any]], None] | None,
) -> bool:
    """Record the epoch (history, metrics.csv, checkpoints, training state, curve); True when time is up."""
    cfg = run.cfg
    val_rows = val.pop("rows")
    row_places = {f"{r['place']}_{'sep' if r['separate'] else 'nosep'}": round(r["f1"], 4) for r in val_rows}
    run.history.append(row)
    append_row(run.metrics_csv, row)
    log.info(
        "epoch %d/%d step %d loss %.4f | %.2f chips/s | val pixel IoU %.3f F1 sep %.3f nosep %.3f",
        epoch, cfg.epochs, run.step, row["train_loss"], row["chips_per_s"], val["val_pixel_iou"],
        val.get("val_f1_sep", float("nan")), val.get("val_f1_nosep", float("nan")),
    )
    elapsed = run.elapsed()
    training = {
        **run.record, "config": cfg.model_dump(mode="json"), "epoch": epoch, "step": run.step,
        "elapsed_s": round(elapsed, 1), "metrics": _jsonable(row), "held_out_f1": row_places,
        "device": str(run.device), "threads": cfg.threads,
    }
    entry = run_entry(
        trainer="fpn_geo.train.loop", device=device_name(run.device), seconds=elapsed, steps=run.step,
        chips=run.step * cfg.batch, gsd_m=cfg.gsd_m, data={"sources": run.record["data"]},
        init_sha256=run.lineage.init_sha256, torch_version=torch.__version__, date=run.lineage.date,
        batch=cfg.batch, chip=cfg.chip, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        backbone_lr_mult=cfg.backbone_lr_mult, freeze_backbone=cfg.freeze_backbone, threads=cfg.threads,
    )
    score = score_of(val)
    meta = _meta(cfg, run.mean, run.std, with_ledger({"training": training}, run.lineage.parent, entry))
    if score > run.best_score:
        run.best_score = score
        write_checkpoint(run.model, meta, run.best_path)
    write_checkpoint(run.model, meta, run.last_path)
    progress = {"epoch": epoch, "step": run.step, "best_score": run.best_score, "elapsed_s": elapsed}
    save_train_state(run.opt, progress, run.last_path)
    if epoch % 5 == 0 and epoch < cfg.epochs:
        plot_curve(run.metrics_csv, run.out / "curve.png")  # matplotlib costs seconds: not every epoch
    if on_epoch:
        on_epoch(row)
    if cfg.max_minutes and elapsed / 60 > cfg.max_minutes:
        log.warning("stopping after epoch %d: max_minutes=%s reached", epoch, cfg.max_minutes)
        return True
    return False


def _path(p: str, root: Path) -> Path:
    return Path(p) if Path(p).is_absolute() else root / p


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return round(float(v), 5) if isinstance(v, (float, np.floating)) else int(v) if isinstance(v, np.integer) else v

    return {k: plain(v) for k, v in row.items()}
