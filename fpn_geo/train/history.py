"""The run's record: one metrics.csv row per epoch, and curve.png drawn from it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_ce", "train_dice", "chips", "chips_per_s", "train_seconds",
    "val_seconds",
    "val_pixel_iou", "val_f1_sep", "val_f1_nosep", "val_precision_sep", "val_recall_sep", "val_tp_sep", "val_fp_sep",
    "val_fn_sep",
    "val_tp_nosep", "val_fp_nosep", "val_fn_nosep", "val_mean_place_f1_sep", "val_mean_place_f1_nosep",
)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one epoch's metrics to the CSV, writing the header first when the file is new."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


def read_rows(path: Path) -> list[dict[str, float]]:
    """The CSV's rows as numbers (empty cells left out); [] when there is no file yet."""
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def truncate_after(path: Path, epoch: int) -> None:
    """Drop rows past ``epoch`` (a run killed after writing a row but before its checkpoint)."""
    rows = [r for r in read_rows(path) if r["epoch"] <= epoch]
    path.unlink(missing_ok=True)
    for r in rows:
        append_row(path, {k: (int(v) if k in ("epoch", "step", "chips") else v) for k, v in r.items()})


def plot_curve(csv_path: Path, png_path: Path) -> None:
    """Training loss and validation scores per epoch (matplotlib, Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(csv_path)
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in rows], label="train loss (CE + Dice)")
    a.set_xlabel("epoch")
    a.legend()
    for key, label in (
        ("val_pixel_iou", "pixel IoU"),
        ("val_f1_sep", "F1 @0.5, separated"),
        ("val_f1_nosep", "F1 @0.5, not separated"),
    ):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            b.plot(ep, [y if y is not None else float("nan") for y in ys], label=label)
    b.set_ylim(0, 1)
    b.set_xlabel("epoch")
    b.set_title("held-out block")
    b.legend()
    fig.tight_layout()
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(png_path)
