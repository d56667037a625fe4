"""The training core both trainers drive: model builder, warm start, optimizer, learning rate, step, checkpoint.

``loop`` (the classic CPU loop: sources, epochs, validation, resume) and ``gpu`` (the torch-only trainer on a
cache, by wall clock) differ in how they feed chips and when they stop; what a step *is* lives here, so a model
trained by one continues in the other: the same parameter groups (a ResNet body that can be frozen or slowed
for a fine-tune), the same schedule (linear warmup, cosine to 1%), the same loss call, the same checkpoint
writer, and the same warm start (``--init``: same architecture, the checkpoint's normalisation, one more
ledger entry).

Imports torch and the model, never the geo stack: the GPU machine has neither rasterio nor pydantic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fpn_geo.errors import CheckpointError
from fpn_geo.model.meta import ModelMeta
from fpn_geo.train.ledger import LEDGER_KEY, extended, ledger_of
from fpn_geo.train.losses import CEDiceLoss

BACKBONE = "fpn.backbone"
"""The ResNet body inside ``BuildingSegmenter``: what ``freeze_backbone`` and ``backbone_lr_mult`` act on."""


# --- model --------------------------------------------------------------------------------------------


def new_model(
    meta: ModelMeta, device: torch.device, state: Mapping[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """The segmenter ``meta`` describes on ``device`` (channels_last on CUDA), random or with ``state`` loaded."""
    from fpn_geo.model.checkpoint import build_model

    model = build_model(meta)
    if state is not None:
        model.load_state_dict(state, strict=True)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass(frozen=True)
class Init:
    """A checkpoint a run starts from: its path, metadata (normalisation, ledger) and fp32 weights."""

    path: Path
    meta: ModelMeta
    state: dict[str, torch.Tensor]


def load_init(path: str | Path) -> Init:
    """Read a checkpoint with the repo's safe loader (safetensors + JSON metadata, sha256 checked, no pickle)."""
    from fpn_geo.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    return Init(Path(path), meta, model.state_dict())


def check_same_architecture(meta: ModelMeta, want: Mapping[str, Any], path: str | Path, flag: str = "--init") -> None:
    """Refuse to continue a checkpoint that differs from what the run asks for (depth, channels, bands, classes);
    ``want`` holds the asked values, None where the run does not care."""
    got = {
        "depth": meta.depth, "fpn_channels": meta.fpn_channels, "head_channels": meta.head_channels,
        "bands": list(meta.bands), "classes": list(meta.classes),
    }
    diff = {k: (got[k], v) for k, v in want.items() if v is not None and got[k] != v}
    if diff:
        said = ", ".join(f"{k} {g} but this run asks for {w}" for k, (g, w) in diff.items())
        raise CheckpointError(
            f"{flag} {path} is {meta.architecture} with {said}; start from a checkpoint of the same architecture, "
            "or train from scratch"
        )


def warm_meta(init: Init, gsd_m: float | None) -> ModelMeta:
    """The metadata of a model continued from ``init``: its architecture and normalisation, at ``gsd_m``
    (the network is fully convolutional: a 0.15 m model can go on at 0.30 m)."""
    # The scene GSDs a model serves (gsd_range_m, fpn_geo.model.registry) carry over only at the parent's GSD: a
    # model trained at another GSD serves other scenes, and its range is declared anew in its NAME.json.
    same_gsd = init.meta.gsd_m is not None and gsd_m is not None and abs(init.meta.gsd_m - gsd_m) < 1e-9
    return dataclasses.replace(
        init.meta, gsd_m=gsd_m, weights_sha256="", extra={}, gsd_range_m=init.meta.gsd_range_m if same_gsd else None
    )


def parent_ledger(init: Init | None) -> list[dict[str, Any]]:
    """The runs behind ``init``'s weights (one reconstructed entry for a checkpoint older than ledgers), or none."""
    return ledger_of(init.meta.extra) if init else []


def with_ledger(
    extra: Mapping[str, Any], parent: Sequence[Mapping[str, Any]], entry: Mapping[str, Any]
) -> dict[str, Any]:
    """``extra`` plus the ledger: the ``parent`` runs and this run's ``entry``."""
    return {**extra, LEDGER_KEY: extended(parent, entry)}


def write_checkpoint(model: torch.nn.Module, meta: ModelMeta, path: str | Path, half: bool = False) -> ModelMeta:
    """NAME.safetensors + NAME.json, atomically, by the repo's one writer; ``half`` stores weights as fp16."""
    from fpn_geo.model.checkpoint import save_checkpoint

    return save_checkpoint(model, meta, path, half=half)


# --- optimisation ---------------------------------------------------------------------------------------


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The ResNet body of a ``BuildingSegmenter``."""
    return model.get_submodule(BACKBONE)


def new_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0,
    freeze_backbone: bool = False, fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over two groups: the FPN and head at ``lr``, the ResNet body at ``backbone_lr_mult`` x ``lr``
    (or frozen: out of the optimizer, no gradients). Each group's ``lr_mult`` is what ``set_lr`` scales by."""
    backbone = backbone_of(model)
    ids = {id(p) for p in backbone.parameters()}
    if freeze_backbone:
        backbone.requires_grad_(False)
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr_mult": 1.0}]
    if not freeze_backbone:
        groups.append({"params": list(backbone.parameters()), "lr_mult": backbone_lr_mult})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)


def lr_at(step: int, frac: float, lr: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then a cosine to 1% of ``lr`` over ``frac`` (0 to 1) of the run.

    Each trainer says what ``frac`` counts: the loop its planned steps or its time budget, whichever runs out
    first; the cache trainer its wall-clock budget.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac)))))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` times its ``lr_mult``."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def set_train_mode(model: torch.nn.Module, freeze_backbone: bool = False) -> None:
    """Training mode, except a frozen backbone, whose BatchNorm keeps the statistics it was trained with."""
    model.train()
    if freeze_backbone:
        backbone_of(model).eval()


def device_name(device: torch.device) -> str:
    """What a ledger calls the device: the GPU's name ("NVIDIA H200"), or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: CEDiceLoss, x: torch.Tensor, y: torch.Tensor,
    amp: contextlib.AbstractContextManager[Any],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on a batch: the loss and its parts, detached, on the device (no host sync here)."""
    with amp:
        logits = model(x)
    loss, parts = loss_fn.terms(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), parts
