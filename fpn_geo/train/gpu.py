"""Torch-only training from a prepared cache (``fpn_geo.train.cache``): the GPU path of ``fpn-geo train``.

Imports nothing but numpy, torch, torchvision and safetensors (no rasterio, geopandas, pydantic or yaml), so it
runs on a bare CUDA machine. Everything lives on the device: the images (uint8, resampled once to the model GSD),
the targets, the chip sampling, the augmentation (dihedral, scale, colour, blur, noise) and the model
(bf16 autocast, channels_last). What a step is (optimizer, schedule, loss, checkpoint writer, warm start) is
``fpn_geo.train.core``, shared with the classic loop. Each model trains for a wall-clock budget, with the
learning rate on a cosine of the time used, and is written as fp16 safetensors + JSON metadata (loaded back as
fp32), split into parts of at most 15 MiB with their sha256, for machines whose files come back in small pieces.

    python -m fpn_geo.train.gpu --cache runs/cache.npz --out-dir OUT --gsd 0.3 0.15 --deadline-minutes 6.3

A warm start (``--init CKPT``) continues a checkpoint of the same architecture, at any model GSD (the network is
fully convolutional), with the checkpoint's normalisation; the metadata's ledger (``fpn_geo.train.ledger``) gains
one entry per run, so device time adds up across sessions. A CPU fine-tune is the same command with
``--device cpu --threads N``, and ``--freeze-backbone`` or ``--backbone-lr-mult 0.1``.

No validation runs here: the held-out blocks are not in the cache. Score the checkpoints through the
production path with ``python -m fpn_geo.train.eval_places``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fpn_geo.errors import ConfigError, FpnGeoError
from fpn_geo.hashing import sha256_file
from fpn_geo.model.meta import ModelMeta
from fpn_geo.train import core
from fpn_geo.train.augment import colour, dihedral, gaussian_blur
from fpn_geo.train.ledger import LEDGER_KEY, cache_data, run_entry, totals
from fpn_geo.train.losses import CEDiceLoss
from fpn_geo.train.samplers import Extent, PixelBox, RandomChipSampler
from fpn_geo.train.targets import IGNORE

PART_BYTES = 15 * 1024 * 1024


@dataclass
class DeviceSource:
    """One cached source on the training device at one model GSD."""

    name: str
    place: str
    image: torch.Tensor  # uint8 (3, H, W)
    target: torch.Tensor  # uint8 (H, W)
    block: PixelBox | None  # held-out block + margin, in this grid's pixels (target is IGNORE there)
    weight: float


def load_cache(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The cache's JSON record and its arrays (read eagerly: the file is small)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{path} is not a readable fpn-geo training cache ({str(e).splitlines()[0][:80]}); build "
                          "one with python -m fpn_geo.train.cache") from e
    if meta.get("format") != "fpn-geo-train-cache/1":
        raise ConfigError(f"{path} is not an fpn-geo training cache (format {meta.get('format')!r}); build one with "
            "python -m fpn_geo.train.cache")
    return meta, arrays


def sources_on_device(
    meta: dict, arrays: dict[str, np.ndarray], gsd: float, device: torch.device, min_side: int
) -> list[DeviceSource]:
    """Decode each source's JPEG, resample it to the grid of ``gsd`` on the device, pad to ``min_side``."""
    from torchvision.io import decode_jpeg

    k = [round(g, 6) for g in meta["gsds"]].index(round(gsd, 6))
    out = []
    for i, rec in enumerate(meta["sources"]):
        grid = rec["grids"][k]
        h, w = grid["shape"]
        img = decode_jpeg(torch.from_numpy(arrays[f"s{i}_jpeg"])).to(device)
        if tuple(img.shape[1:]) != (h, w):
            down = img.shape[1] > h
            img = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=down)[0]
            img = img.round().clamp(0, 255).to(torch.uint8)
        tgt = torch.from_numpy(arrays[f"s{i}_t{k}"]).to(device)
        ph, pw = max(0, min_side - h), max(0, min_side - w)
        if ph or pw:  # small sources (a 0.5 m Rio tile at 0.3 m...) are padded: no loss there
            img = F.pad(img, (0, pw, 0, ph))
            tgt = F.pad(tgt, (0, pw, 0, ph), value=IGNORE)
        b = grid["block"]
        out.append(
            DeviceSource(
                rec["name"], rec["place"], img.contiguous(), tgt.contiguous(), PixelBox(*b) if b else None,
                rec["weight"],
            )
        )
    return out


class ChipBatcher:
    """Batches of (normalized float image, int64 target) cut from device sources, augmented on the device.

    Positions come from ``RandomChipSampler`` at the largest crop side, so every chip, whatever its zoom,
    stays clear of the held-out blocks.
    """

    def __init__(self, sources: list[DeviceSource], chip: int, batch: int, mean, std, scale: tuple[float, float],
                 colour_aug: float, blur_p: float, seed: int) -> None:
        self.sources, self.chip, self.batch = sources, chip, batch
        self.scale = (min(scale), max(scale))
        self.max_side = int(math.ceil(chip * self.scale[1] / 32) * 32)
        extents = [Extent(s.image.shape[1], s.image.shape[2], s.block, s.weight) for s in sources]
        self.sampler = RandomChipSampler(extents, self.max_side, length=1 << 62, gap=0, seed=seed)
        self.positions = iter(self.sampler)
        dev = sources[0].image.device
        self.gen = torch.Generator(device=dev)
        self.gen.manual_seed(seed)
        self.rng = np.random.default_rng(seed + 1)
        self.mean = torch.tensor(mean, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
        self.colour_aug, self.blur_p = colour_aug, blur_p

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.scale
        zoom = math.exp(self.rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
        side = min(self.max_side, max(32, int(round(self.chip * zoom))))
        qs = [next(self.positions) for _ in range(self.batch)]
        x = torch.stack(
            [self.sources[q.source].image[:, q.row : q.row + side, q.col : q.col + side] for q in qs]
        ).float()
        y = torch.stack([self.sources[q.source].target[q.row : q.row + side, q.col : q.col + side] for q in qs])
        if side != self.chip:
            x = F.interpolate(
                x, size=(self.chip, self.chip), mode="bilinear", align_corners=False, antialias=side > self.chip
            )
            y = F.interpolate(y[:, None].float(), size=(self.chip, self.chip), mode="nearest")[:, 0].to(torch.uint8)
        x, y = dihedral(x, y, int(self.rng.integers(4)), bool(self.rng.integers(2)))
        x = colour(x, self.colour_aug, self.gen)
        if self.rng.random() < self.blur_p:
            x = gaussian_blur(x, float(self.rng.uniform(0.3, 1.5)))
        x = x + torch.randn(x.shape, device=x.device, generator=self.gen) * float(self.rng.uniform(0, 4))
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last), y.long()


def split_parts(path: Path, out_dir: Path, part_bytes: int = PART_BYTES) -> list[tuple[str, str]]:
    """Cut ``path`` into NAME.partNN files of at most ``part_bytes`` in ``out_dir``; returns (part name, sha256)."""
    parts = []
    with open(path, "rb") as f:
        i = 0
        while chunk := f.read(part_bytes):
            p = out_dir / f"{path.name}.part{i:02d}"
            p.write_bytes(chunk)
            parts.append((p.name, hashlib.sha256(chunk).hexdigest()))
            i += 1
    return parts


def train_one(
    cache_meta: dict, arrays: dict, gsd: float, seconds: float, device: torch.device, args: argparse.Namespace,
    log=print, init: core.Init | None = None, save_to: Path | None = None,
) -> tuple[torch.nn.Module, ModelMeta, dict]:
    """Train one model at ``gsd`` for ``seconds`` of wall time (or ``args.max_steps``), fresh or from ``init``;
    returns model, metadata (with the ledger extended by this run), metrics. With ``args.save_every``, the
    checkpoint so far is written to ``save_to`` that often, so a run that is killed still leaves one."""
    cfg = cache_meta["config"]
    chip, batch = args.chip or cfg["chip"], args.batch or cfg["batch"]
    torch.manual_seed(cfg["seed"])
    model, meta = _new_model(cache_meta, gsd, device, args, init)
    t_load = time.perf_counter()
    scale = tuple(cfg.get("scale_aug", (1.0, 1.0)))
    sources = sources_on_device(cache_meta, arrays, gsd, device, int(math.ceil(chip * max(scale) / 32) * 32))
    batcher = ChipBatcher(
        sources, chip, batch, meta.mean, meta.std, scale, cfg.get("colour_aug", 0.25), cfg.get("blur_p", 0.3),
        cfg["seed"],
    )
    load_s = time.perf_counter() - t_load
    name = core.device_name(device)

    def record(step: int, train_s: float, chips_per_s: float, losses: list) -> tuple[ModelMeta, dict]:
        """The metadata and metrics of the model after ``step`` steps and ``train_s`` seconds."""
        metrics = {
            "gsd_m": gsd, "steps": step, "chips": step * batch, "batch": batch, "chip": chip,
            "train_seconds": round(train_s, 1),
            "load_seconds": round(load_s, 1), "chips_per_s": round(chips_per_s, 1), "loss_curve": list(losses),
            "device": name, "torch": torch.__version__,
        }
        entry = run_entry(
            trainer="fpn_geo.train.gpu", device=name, seconds=train_s, steps=step, chips=step * batch, gsd_m=gsd,
            data=cache_data(cache_meta, args.cache_sha256), init_sha256=init.meta.weights_sha256 if init else None,
            torch_version=torch.__version__, batch=batch, chip=chip, **_settings(cfg, args),
        )
        extra = core.with_ledger({
            "training": {
                "trainer": "fpn_geo.train.gpu", **metrics, "places": sorted({s.place for s in sources}),
                "sources": [{
                    "name": s.name, "place": s.place, "weight": s.weight,
                    "held_out_px": [s.block.row0, s.block.col0, s.block.row1, s.block.col1] if s.block else None,
                } for s in sources],
                "config": cfg, "cache_sha256": args.cache_sha256,
                "init": {"path": str(init.path), "sha256": init.meta.weights_sha256} if init else None,
            },
        }, core.parent_ledger(init), entry)
        return dataclasses.replace(meta, extra=extra), metrics

    def save(step: int, train_s: float, losses: list) -> None:
        if save_to is not None:
            core.write_checkpoint(model, record(step, train_s, step * batch / max(train_s, 1e-9), losses)[0],
                                  save_to, half=True)
            log(f"gsd {gsd} step {step}: saved {save_to}")

    step, losses, train_s, chips_per_s = _train_steps(
        model, batcher, cfg, batch, seconds, device, args, log, gsd, save
    )
    model.eval()
    meta, metrics = record(step, train_s, chips_per_s, losses)
    return model, meta, metrics


def _settings(cfg: dict, args: argparse.Namespace) -> dict:
    """How a run trained, for its ledger entry: the knobs a fine-tune changes."""
    return {
        "lr": args.lr or cfg["lr"], "warmup_steps": cfg["warmup_steps"] if args.warmup is None else args.warmup,
        "backbone_lr_mult": args.backbone_lr_mult, "freeze_backbone": args.freeze_backbone,
        "threads": torch.get_num_threads(),
    }


def _new_model(
    cache_meta: dict, gsd: float, device: torch.device, args: argparse.Namespace, init: core.Init | None = None,
) -> tuple[torch.nn.Module, ModelMeta]:
    """The segmenter to train on ``device`` and its metadata: fresh (the cache's normalisation; ``args`` may
    override the size) or ``init``'s weights and normalisation at the new ``gsd``."""
    cfg = cache_meta["config"]
    if init is not None:
        core.check_same_architecture(init.meta, {
            "depth": args.depth or None, "fpn_channels": args.fpn_channels or None,
            "head_channels": args.head_channels or None, "bands": list(cfg["bands"]),
            "classes": list(cache_meta["classes"]),
        }, init.path)
        meta = core.warm_meta(init, gsd)
    else:
        meta = ModelMeta(
            depth=args.depth or cfg["depth"], bands=tuple(cfg["bands"]), mean=tuple(cache_meta["mean"]),
            std=tuple(cache_meta["std"]), classes=tuple(cache_meta["classes"]), gsd_m=gsd,
            fpn_channels=args.fpn_channels or cfg["fpn_channels"],
            head_channels=args.head_channels or cfg["head_channels"],
        )
    return core.new_model(meta, device, init.state if init else None), meta


def _train_steps(
    model: torch.nn.Module, batcher: ChipBatcher, cfg: dict, batch: int, seconds: float, device: torch.device,
    args: argparse.Namespace, log, gsd: float, save=None,
) -> tuple[int, list[tuple[int, float, float]], float, float]:
    """Optimizer steps until ``seconds`` or ``args.max_steps``, calling ``save(step, seconds, loss curve)`` every
    ``args.save_every`` seconds: (steps, loss curve, seconds, chips/s after warm-up)."""
    cuda = device.type == "cuda"
    lr = args.lr or cfg["lr"]
    warmup = cfg["warmup_steps"] if args.warmup is None else args.warmup
    opt = core.new_optimizer(model, lr, cfg["weight_decay"], args.backbone_lr_mult, args.freeze_backbone, fused=cuda)
    loss_fn = CEDiceLoss(tuple(cfg["class_weights"]), cfg["dice_weight"]).to(device)
    amp = core.autocast(device)
    core.set_train_mode(model, args.freeze_backbone)
    t0 = time.perf_counter()
    step, losses, t_warm, step_warm = 0, [], None, 0
    t_saved = t0
    loss_sum = torch.zeros((), device=device)
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds or (args.max_steps is not None and step >= args.max_steps):
            break
        core.set_lr(opt, core.lr_at(step, elapsed / seconds, lr, warmup))
        x, y = next(batcher)
        loss, _ = core.train_step(model, opt, loss_fn, x, y, amp)
        loss_sum += loss
        step += 1
        if step == 20:  # after cudnn's autotuning and the allocator's warm-up
            if cuda:
                torch.cuda.synchronize()
            t_warm, step_warm = time.perf_counter(), step
        if step % 100 == 0:
            mean_loss = float(loss_sum) / 100
            loss_sum.zero_()
            losses.append((step, round(time.perf_counter() - t0, 1), round(mean_loss, 4)))
            log(f"gsd {gsd} step {step} {time.perf_counter() - t0:.0f}s loss {mean_loss:.4f}")
        if save is not None and args.save_every and time.perf_counter() - t_saved >= args.save_every:
            save(step, time.perf_counter() - t0, losses)
            t_saved = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    timed = (
        (step - step_warm) * batch / (t_end - t_warm)
        if t_warm and step > step_warm
        else step * batch / max(t_end - t0, 1e-9)
    )
    return step, losses, t_end - t0, timed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m fpn_geo.train.gpu``."""
    p = argparse.ArgumentParser(prog="python -m fpn_geo.train.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--out-dir", required=True, help="checkpoint parts, SHA256SUMS and train_gpu.json go here")
    p.add_argument(
        "--gsd", type=float, nargs="+", default=None, help="model GSDs to train, in order (default: all in the cache)"
    )
    p.add_argument(
        "--deadline-minutes",
        type=float,
        default=6.3,
        help="wall time for everything from the start (after imports); split over the models (default: %(default)s)",
    )
    p.add_argument("--seconds", type=float, default=None,
                   help="training seconds per model, instead of a share of --deadline-minutes")
    p.add_argument("--device", default="cuda", help="cuda or cpu (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--init", default=None,
                   help="warm start: continue this checkpoint (NAME.safetensors + NAME.json) of the same architecture; "
                   "keeps its normalisation and extends its ledger")
    p.add_argument("--lr", type=float, default=0.0, help="peak learning rate (default: the cache config's)")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default: the cache config's)")
    p.add_argument("--backbone-lr-mult", type=float, default=1.0,
                   help="the ResNet body's learning rate as a share of --lr, e.g. 0.1 to fine-tune (default: 1)")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the FPN and head; the ResNet body and its BatchNorm statistics stay as they are")
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--chip", type=int, default=0)
    p.add_argument("--depth", type=int, default=0)
    p.add_argument("--fpn-channels", type=int, default=0)
    p.add_argument("--head-channels", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop each model after this many steps (smoke tests)")
    p.add_argument("--save-every", type=float, default=0.0, metavar="SECONDS",
                   help="also write the whole checkpoint so far to OUT-DIR/whole this often (a killed run keeps it)")
    p.add_argument("--keep-whole", action="store_true",
                   help="also keep NAME.safetensors + NAME.json whole in OUT-DIR/whole, loadable by fpn-geo segment "
                   "--model")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m fpn_geo.train.gpu``: train on a cache; the exit code."""
    t_start = time.perf_counter()  # the deadline counts from here (torch is already imported)
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print(
                "gpu: error: --device cuda but torch sees no CUDA device; use --device cpu for a smoke test",
                file=sys.stderr,
            )
            return 2
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        init = core.load_init(args.init) if args.init else None
        return _run(args, device, init, t_start)
    except FpnGeoError as e:
        print(f"gpu: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, device: torch.device, init: core.Init | None, t_start: float) -> int:
    """Train each GSD in turn, write its checkpoint (parts, and whole with ``--keep-whole``) and the report."""
    if not Path(args.cache).is_file():
        raise ConfigError(f"--cache {args.cache} does not exist; build it with python -m fpn_geo.train.cache")
    cache_meta, arrays = load_cache(args.cache)
    args.cache_sha256 = sha256_file(Path(args.cache))
    gsds = args.gsd or cache_meta["gsds"]
    missing = [g for g in gsds if round(g, 6) not in {round(c, 6) for c in cache_meta["gsds"]}]
    if missing:
        raise ConfigError(f"--gsd {missing} is not in the cache {args.cache}, which holds {cache_meta['gsds']}; "
                          "pick one of those or rebuild the cache with --gsds")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    whole = args.keep_whole or args.save_every
    work = out_dir / "whole" if whole else Path(os.environ.get("TMPDIR", "/tmp")) / f"fpn-geo-gpu-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    deadline = args.deadline_minutes * 60
    reserve = 8.0  # per model: the checkpoint write and split
    report = {
        "cache": str(args.cache),
        "cache_sha256": args.cache_sha256,
        "deadline_minutes": args.deadline_minutes,
        "init": str(args.init) if args.init else None,
        "models": {},
    }
    sums = []
    for i, gsd in enumerate(gsds):
        left = deadline - (time.perf_counter() - t_start) - reserve * (len(gsds) - i)
        seconds = args.seconds if args.seconds is not None else max(5.0, left / (len(gsds) - i))
        print(f"gsd {gsd}: training for {seconds:.0f} s on {device}"
              + (f", from {args.init}" if init else ""), flush=True)
        depth = init.meta.depth if init else args.depth or cache_meta["config"]["depth"]
        name = f"fpn_r{depth}_gsd{int(round(gsd * 100)):03d}"
        ckpt = work / f"{name}.safetensors"
        model, meta, metrics = train_one(
            cache_meta, arrays, gsd, seconds, device, args, log=lambda s: print(s, flush=True), init=init,
            save_to=ckpt if args.save_every else None,
        )
        meta_d = core.write_checkpoint(model, meta, ckpt, half=True).to_dict()
        parts = split_parts(ckpt, out_dir)
        sums += [(h, n) for n, h in parts]
        report["models"][name] = {
            "meta": meta_d, "sha256": meta_d["weights_sha256"], "bytes": ckpt.stat().st_size,
            "parts": [n for n, _ in parts], "metrics": metrics,
        }
        runs = totals(meta_d["extra"][LEDGER_KEY])
        print(f"gsd {gsd}: {metrics['steps']} steps, {metrics['chips_per_s']:.0f} chips/s, "
            f"{ckpt.stat().st_size / 2**20:.1f} MiB -> {len(parts)} part(s); ledger: {runs['runs']} run(s), "
            f"{runs['seconds']:.0f} s, {runs['steps']} steps, {runs['chips']} chips", flush=True)
        if whole:
            print(f"gsd {gsd}: whole checkpoint {ckpt} (+ {ckpt.with_suffix('.json').name})", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    (out_dir / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for h, n in sums))
    report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    (out_dir / "train_gpu.json").write_text(json.dumps(report, indent=1))
    print(
        f"done in {report['wall_seconds']:.0f} s: "
        + ", ".join(f"{n} {m['metrics']['chips_per_s']:.0f} chips/s" for n, m in report["models"].items()),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
