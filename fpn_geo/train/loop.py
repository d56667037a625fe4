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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fpn_geo.device import resolve_device
from fpn_geo.errors import ConfigError
from fpn_geo.model import CLASSES_3, ModelMeta, build_model, load_checkpoint, save_checkpoint
from fpn_geo.train.augment import Augment
from fpn_geo.train.config import REPO, TrainConfig
from fpn_geo.train.dataset import ChipDataset, Source, collate, load_source, normalization_stats
from fpn_geo.train.history import append_row, plot_curve, truncate_after
from fpn_geo.train.losses import CEDiceLoss
from fpn_geo.train.samplers import Extent, RandomChipSampler
from fpn_geo.train.state import load_train_state, save_train_state
from fpn_geo.train.validate import export_blocks, segmenter_from_model, validate_places

CLASSES_SEPARATOR = ("background", "building", "separator")

log = logging.getLogger("fpn_geo.train")


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    best: Path
    last: Path
    epochs_run: int
    best_score: float
    history: list[dict[str, Any]]
    chips_per_s: float


def load_sources(cfg: TrainConfig, root: Path = REPO) -> list[Source]:
    """Every configured image (globs expanded) at the model GSD, with its labels burnt in."""
    sources = []
    for sc in cfg.sources:
        pairs = sc.pairs(root)
        for k, (img, lab, kind) in enumerate(pairs):
            name = sc.name if len(pairs) == 1 else f"{sc.name}/{img.stem}"
            # a glob's weight is the group's: each member gets its share
            sources.append(load_source(name, img, lab, kind, cfg.gsd_m, cfg.bands, cfg.contact_px, sc.weight / len(pairs), sc.val_block, cfg.target))
    return sources


def lr_at(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warmup, then cosine decay to 1% of ``lr`` at the last planned step.

    With ``max_minutes`` the decay follows whichever runs out first, steps or wall time,
    so a run cut short by its time budget still ends at a low learning rate.
    """
    total = cfg.epochs * cfg.steps_per_epoch
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.max_minutes:
        t = max(t, elapsed_s / (cfg.max_minutes * 60))
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def score_of(metrics: dict[str, float]) -> float:
    """What 'best' means: the mean over places of held-out F1 with separation (each place counts the same)."""
    return metrics.get("val_mean_place_f1_sep", metrics.get("val_f1_sep", metrics["val_pixel_iou"]))


def classes_of(cfg: TrainConfig) -> tuple[str, ...]:
    return CLASSES_SEPARATOR if cfg.target == "separator" else CLASSES_3


def _meta(cfg: TrainConfig, mean, std, extra: dict) -> ModelMeta:
    return ModelMeta(
        depth=cfg.depth, bands=tuple(cfg.bands), mean=tuple(mean), std=tuple(std), classes=classes_of(cfg), gsd_m=cfg.gsd_m,
        fpn_channels=cfg.fpn_channels, head_channels=cfg.head_channels, extra=extra,
    )


def _check_same_arch(meta: ModelMeta, cfg: TrainConfig, path: str) -> None:
    want = (cfg.depth, tuple(cfg.bands), cfg.fpn_channels, cfg.head_channels, classes_of(cfg))
    got = (meta.depth, tuple(meta.bands), meta.fpn_channels, meta.head_channels, tuple(meta.classes))
    if want != got:
        raise ConfigError(f"checkpoint {path} is {meta.architecture} bands {list(meta.bands)}; the config asks for {want[:4]}; match depth/bands/channels")


def train(cfg: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None, root: Path = REPO) -> TrainResult:
    """Train per ``cfg``; returns where the checkpoints are and the per-epoch history."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    cuda = device.type == "cuda"
    out = Path(cfg.out_dir) if Path(cfg.out_dir).is_absolute() else root / cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    metrics_csv, last_path, best_path = out / "metrics.csv", out / "last.safetensors", out / "best.safetensors"

    sources = load_sources(cfg, root)
    start_epoch, step, best_score, elapsed_before = 1, 0, -1.0, 0.0
    if cfg.resume:
        model, meta = load_checkpoint(_path(cfg.resume, root))
        _check_same_arch(meta, cfg, cfg.resume)
        mean, std = meta.mean, meta.std  # keep the statistics the weights were trained with
    else:
        mean, std = normalization_stats(sources)
        meta = _meta(cfg, mean, std, {})
        model = build_model(meta)
        if cfg.init:
            init_model, init_meta = load_checkpoint(_path(cfg.init, root))
            _check_same_arch(init_meta, cfg, cfg.init)
            model.load_state_dict(init_model.state_dict())
        metrics_csv.unlink(missing_ok=True)
    model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.resume:
        progress = load_train_state(opt, _path(cfg.resume, root))
        start_epoch, step, best_score = progress["epoch"] + 1, progress["step"], progress["best_score"]
        elapsed_before = progress.get("elapsed_s", 0.0)
        if start_epoch > cfg.epochs:
            raise ConfigError(
                f"{cfg.resume} already finished epoch {progress['epoch']} of epochs={cfg.epochs}; "
                f"raise epochs above {progress['epoch']} to train on"
            )
        truncate_after(metrics_csv, progress["epoch"])
        log.info("resumed from %s at epoch %d, step %d", cfg.resume, start_epoch, step)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    extents = [Extent(*s.shape, s.val_block, s.weight) for s in sources]
    blocks = export_blocks(cfg, out / "holdout", root)  # cut once; validated through pipeline.segment every epoch
    loss_fn = CEDiceLoss(cfg.class_weights, cfg.dice_weight).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    record = {"data": [{"name": s.name, "path": _rel(s.path, root), "shape": list(s.shape), "gsd_m": round(s.gsd_m, 4), "val_block_px": dataclasses.astuple(s.val_block) if s.val_block else None} for s in sources]}

    history: list[dict[str, Any]] = []
    t_run = time.perf_counter()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs + 1):
        # per-epoch seeds: a resumed run draws the same chips as an uninterrupted one
        sampler = RandomChipSampler(extents, cfg.chip, cfg.steps_per_epoch * cfg.batch, gap=cfg.chip // 8, seed=cfg.seed * 100003 + epoch)
        train_set = ChipDataset(sources, mean, std, Augment(cfg.jitter, seed=cfg.seed * 100003 + epoch))
        queries = list(sampler)
        model.train()
        sums = {"loss": 0.0, "ce": 0.0, "dice": 0.0}
        t0 = time.perf_counter()
        for i in range(0, len(queries), cfg.batch):
            batch = collate([train_set[q] for q in queries[i : i + cfg.batch]])
            x, y = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr = lr_at(step, cfg, elapsed_before + time.perf_counter() - t_run)
            with amp:
                logits = model(x)
            loss, parts = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sums["loss"] += float(loss.detach())
            sums["ce"] += parts["ce"]
            sums["dice"] += parts["dice"]
        train_s = time.perf_counter() - t0
        n_steps = max(1, math.ceil(len(queries) / cfg.batch))
        t1 = time.perf_counter()
        segmenter = segmenter_from_model(model, _meta(cfg, mean, std, {}), str(device))
        val = validate_places(segmenter, blocks, out / "holdout" / "val", cfg.threshold, cfg.min_area_m2, cfg.simplify_m, device=str(device))
        val_rows = val.pop("rows")
        row = {
            "epoch": epoch, "step": step, "lr": lr, "train_loss": sums["loss"] / n_steps, "train_ce": sums["ce"] / n_steps,
            "train_dice": sums["dice"] / n_steps, "chips": len(queries), "chips_per_s": len(queries) / train_s,
            "train_seconds": train_s, "val_seconds": time.perf_counter() - t1, **val,
        }
        row_places = {f"{r['place']}_{'sep' if r['separate'] else 'nosep'}": round(r["f1"], 4) for r in val_rows}
        history.append(row)
        append_row(metrics_csv, row)
        log.info(
            "epoch %d/%d step %d loss %.4f | %.2f chips/s | val pixel IoU %.3f F1 sep %.3f nosep %.3f",
            epoch, cfg.epochs, step, row["train_loss"], row["chips_per_s"], val["val_pixel_iou"], val.get("val_f1_sep", float("nan")), val.get("val_f1_nosep", float("nan")),
        )
        elapsed = elapsed_before + time.perf_counter() - t_run
        extra = {"training": {**record, "config": cfg.model_dump(mode="json"), "epoch": epoch, "step": step, "elapsed_s": round(elapsed, 1), "metrics": _jsonable(row), "held_out_f1": row_places, "device": str(device), "threads": cfg.threads}}
        score = score_of(val)
        meta = _meta(cfg, mean, std, extra)
        if score > best_score:
            best_score = score
            save_checkpoint(model, meta, best_path)
        save_checkpoint(model, meta, last_path)
        save_train_state(opt, {"epoch": epoch, "step": step, "best_score": best_score, "elapsed_s": elapsed}, last_path)
        if epoch % 5 == 0 and epoch < cfg.epochs:
            plot_curve(metrics_csv, out / "curve.png")  # matplotlib costs seconds: not every epoch
        if on_epoch:
            on_epoch(row)
        if cfg.max_minutes and elapsed / 60 > cfg.max_minutes:
            log.warning("stopping after epoch %d: max_minutes=%s reached", epoch, cfg.max_minutes)
            break
    if history:
        plot_curve(metrics_csv, out / "curve.png")
    cps = float(np.mean([r["chips_per_s"] for r in history])) if history else 0.0
    return TrainResult(out, best_path, last_path, len(history), best_score, history, cps)


def _path(p: str, root: Path) -> Path:
    return Path(p) if Path(p).is_absolute() else root / p


def _rel(p: str, root: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(root))
    except ValueError:
        return str(p)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(float(v), 5) if isinstance(v, (float, np.floating)) else int(v) if isinstance(v, (np.integer,)) else v) for k, v in row.items()}
