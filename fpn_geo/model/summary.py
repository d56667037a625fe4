"""A checkpoint in a dozen lines, for `fpn-geo info CKPT`: what it is, what it serves, how it post-processes,
how much training is behind it and how it scored on held-out ground. The full record is `info --json`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fpn_geo.model.meta import POSTPROCESS_KEYS, ModelMeta, meta_path


def heldout_path(weights: str | Path) -> Path:
    """Where a checkpoint's held-out scores are kept: NAME.heldout.json beside NAME.safetensors
    (`python -m fpn_geo.train.eval_places --json`)."""
    return meta_path(weights).with_suffix(".heldout.json")


def read_heldout(weights: str | Path, meta: ModelMeta) -> Mapping[str, Any] | None:
    """The held-out report of a checkpoint: `extra["heldout"]` if it carries one, else NAME.heldout.json; None
    when there is neither or it cannot be read (it only decorates the summary)."""
    embedded = meta.extra.get("heldout")
    if isinstance(embedded, Mapping):
        return embedded
    path = heldout_path(weights)
    try:
        data = json.loads(path.read_text()) if path.is_file() and path.stat().st_size < 16 * 1024 * 1024 else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, Mapping) else None


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, bool) else str(v)


def _postprocess_line(meta: ModelMeta, config_defaults: Mapping[str, Any]) -> str:
    own = [f"{k} {_num(meta.postprocess[k])}" for k in POSTPROCESS_KEYS if k in meta.postprocess]
    rest = [f"{k} {_num(config_defaults[k])}" for k in POSTPROCESS_KEYS if k not in meta.postprocess]
    parts = []
    if own:
        parts.append(", ".join(own) + " (this model's defaults; a config file or flag overrides them)")
    if rest:
        parts.append(", ".join(rest) + " (config defaults)")
    return "\n              ".join(parts)


def _training_line(extra: Mapping[str, Any]) -> str:
    from fpn_geo.train.ledger import ledger_of, totals

    ledger = ledger_of(extra)
    if not ledger:
        return "not recorded"
    t = totals(ledger)
    devices = ", ".join(f"{d} {s:g} s" for d, s in t["device_seconds"].items())
    runs = f"{t['runs']} run" + ("s" if t["runs"] != 1 else "")
    return f"{runs}, {t['seconds']:g} s, {t['steps']:,} steps, {t['chips']:,} chips ({devices})"


def _heldout_line(report: Mapping[str, Any], threshold: float, separate: bool) -> str | None:
    rows = [
        r for r in report.get("rows", []) if isinstance(r, Mapping)
        and r.get("threshold") == threshold and bool(r.get("separate")) == separate and "f1" in r
    ]
    if not rows:
        return None
    f1 = {str(r.get("place")): float(r["f1"]) for r in rows}
    line = ", ".join(f"{p} {v:.2f}" for p, v in sorted(f1.items())) + f"; mean {sum(f1.values()) / len(f1):.3f}"
    from fpn_geo.train.validate import setting_key

    by_kind = (report.get("summary") or {}).get(setting_key(threshold, separate), {}).get("mean_by_imagery") or {}
    if by_kind:
        line += " (" + ", ".join(f"{k} {v:.3f}" for k, v in sorted(by_kind.items())) + ")"
    return f"F1 at threshold {threshold:g}, separation {'on' if separate else 'off'}:\n              {line}"


def checkpoint_summary(
    path: str | Path, meta: ModelMeta, parameters: int | None, config_defaults: Mapping[str, Any],
    heldout: Mapping[str, Any] | None = None,
) -> str:
    """The human summary `fpn-geo info CKPT` prints. `config_defaults`: SegmentConfig's documented defaults."""
    lo, hi = meta.serves_m
    serves = (f"scene GSDs [{lo:g}, {hi:g}] m" if meta.gsd_range_m is not None
              else "every scene GSD (no gsd_range_m)")
    gsd = f"{meta.gsd_m:g} m" if meta.gsd_m else "the scene's own"
    lines = [
        f"{path}: {meta.architecture}" + (f", {parameters / 1e6:.1f} M parameters" if parameters else ""),
        f"  bands       {list(meta.bands)}, pixel values {meta.input_range[0]:g}-{meta.input_range[1]:g}",
        f"  classes     {', '.join(meta.classes)}",
        f"  GSD         {gsd}; serves {serves}",
        f"  post        {_postprocess_line(meta, config_defaults)}",
        f"  training    {_training_line(meta.extra)}",
    ]
    if heldout is not None:
        threshold = float(meta.postprocess.get("threshold", config_defaults["threshold"]))
        separate = bool(meta.postprocess.get("separate_touching", config_defaults["separate_touching"]))
        line = _heldout_line(heldout, threshold, separate and meta.channels > 1)
        if line:
            lines.append(f"  held-out    {line}")
    if meta.weights_sha256:
        lines.append(f"  sha256      {meta.weights_sha256}")
    lines.append(f"full record: fpn-geo info {path} --json")
    return "\n".join(lines)
