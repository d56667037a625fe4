"""The ledger: every training run behind a checkpoint's weights, kept in its metadata (``extra["ledger"]``).

Device time comes in short slices, so a model is trained a little at a time: each run starts from the last
checkpoint (``--init``) and appends one entry here. The ledger is what the model card shows and what
``totals`` adds up: how many seconds, steps and chips, on which devices, from which data.

Plain dicts and the standard library only: the torch-only trainer, ``fpn-geo info`` and the model card
all read it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LEDGER_KEY = "ledger"


def recorded_path(path: str | Path, root: Path) -> str:
    """A data file as a ledger records it: relative to ``root`` (the repository, or the config's folder) when it
    lies inside, so a checkpoint does not carry the directories of the machine that trained it; else as given."""
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def run_entry(
    *, trainer: str, device: str, seconds: float, steps: int, chips: int, gsd_m: float | None,
    data: Mapping[str, Any], init_sha256: str | None, torch_version: str, date: str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """One training run: where it ran, for how long, on what data, from which weights.

    ``date`` defaults to now (UTC, ISO 8601); ``settings`` records how it trained (lr, batch, frozen backbone...).
    """
    return {
        "trainer": trainer, "device": device, "seconds": round(float(seconds), 1), "steps": int(steps),
        "chips": int(chips), "gsd_m": gsd_m, "init_sha256": init_sha256, "data": dict(data),
        "date": date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "torch": torch_version,
        **settings,
    }


def reconstructed_entry(training: Mapping[str, Any], date: str | None = None) -> dict[str, Any]:
    """The first entry of a checkpoint trained before ledgers existed, rebuilt from its ``extra["training"]``.

    Marked ``"reconstructed": true``: its numbers are what that record kept, not what a ledger wrote at the time.
    """
    sources = [
        {k: s[k] for k in ("name", "place") if k in s} for s in training.get("sources", []) if isinstance(s, Mapping)
    ]
    seconds = training.get("train_seconds", training.get("elapsed_s", 0.0))
    return {
        "trainer": training.get("trainer", "unknown"), "device": training.get("device", "unknown"),
        "seconds": round(float(seconds or 0.0), 1), "steps": int(training.get("steps", training.get("step", 0)) or 0),
        "chips": int(training.get("chips", 0) or 0), "gsd_m": training.get("gsd_m"), "init_sha256": None,
        "data": {"cache_sha256": training.get("cache_sha256"), "sources": sources},
        "date": date, "torch": training.get("torch"), "reconstructed": True,
    }


def ledger_of(extra: Mapping[str, Any], date: str | None = None) -> list[dict[str, Any]]:
    """The ledger of a checkpoint's ``extra``; for one without a ledger, one reconstructed entry (or none if it
    records no training). ``date`` is used only for a reconstructed entry."""
    ledger = extra.get(LEDGER_KEY)
    if isinstance(ledger, list):
        return [dict(e) for e in ledger]
    training = extra.get("training")
    if isinstance(training, Mapping) and training:
        return [reconstructed_entry(training, date)]
    return []


def extended(parent: Sequence[Mapping[str, Any]], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The parent's ledger with one more run; the parent's entries are copied, never changed."""
    return [dict(e) for e in parent] + [dict(entry)]


def totals(ledger: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Runs, seconds, steps and chips summed over the ledger, and seconds per device."""
    devices: dict[str, float] = {}
    for e in ledger:
        devices[str(e.get("device"))] = round(devices.get(str(e.get("device")), 0.0) + float(e.get("seconds", 0)), 1)
    return {
        "runs": len(ledger),
        "seconds": round(sum(float(e.get("seconds", 0)) for e in ledger), 1),
        "steps": sum(int(e.get("steps", 0)) for e in ledger),
        "chips": sum(int(e.get("chips", 0)) for e in ledger),
        "device_seconds": devices,
    }


def cache_data(cache_meta: Mapping[str, Any], cache_sha256: str) -> dict[str, Any]:
    """The data of a run on a training cache: the cache's sha256, and each source's name, place, files and
    their sha256 where the cache recorded them."""
    keep = ("name", "place", "weight", "image", "labels", "image_sha256", "labels_sha256")
    return {
        "cache_sha256": cache_sha256,
        "sources": [{k: s[k] for k in keep if k in s} for s in cache_meta.get("sources", [])],
    }
