"""Instance labelling in torch, on the device where a CUDA block's canvas already is.

On a GPU host the CPU watershed (`fpn_geo.instances`) was the stage the model waited for: it held the GIL and
took 55 thread-seconds of an 11 s run (issue 9). Here the same rules run as whole-array torch ops, so only the
labels (int32) and the probabilities (uint8) are copied back:

- connected components by union-find in whole-array steps (ids are each component's first pixel in raster order,
  so after `consecutive` they equal `scipy.ndimage.label`'s);
- the watershed of P(interior) from the cores is a flood in FLOOD_LEVELS descending levels of P(interior), each
  grown to a fixed point: blobs with one core come out exactly as on the CPU, split lines between touching
  buildings can sit a pixel away from the exact watershed's (held-out F1 is the same: see docs/benchmarks.md).

The same code runs on the CPU (the tests compare it with `fpn_geo.instances` there), but slower than scipy: the
pipeline uses it only on CUDA.
"""

from __future__ import annotations

import torch

from fpn_geo.instances import MIN_CORE_PX, threshold_u8

FLOOD_LEVELS = 16  # descending levels of P(interior) between the threshold and 0 that the flood fills in turn


def _neighbour_max(lab: torch.Tensor) -> torch.Tensor:
    """The largest label among a pixel's 4 neighbours (0 where none is labelled)."""
    out = torch.zeros_like(lab)
    out[1:] = torch.maximum(out[1:], lab[:-1])
    out[:-1] = torch.maximum(out[:-1], lab[1:])
    out[:, 1:] = torch.maximum(out[:, 1:], lab[:, :-1])
    out[:, :-1] = torch.maximum(out[:, :-1], lab[:, 1:])
    return out


def _pairs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indexes (a, b) of the 4-neighbour pixel pairs that are both in `mask`."""
    h, w = mask.shape
    idx = torch.arange(h * w, device=mask.device, dtype=torch.int64).view(h, w)
    across = mask[:, :-1] & mask[:, 1:]
    down = mask[:-1] & mask[1:]
    a = torch.cat([idx[:, :-1][across], idx[:-1][down]])
    b = torch.cat([idx[:, 1:][across], idx[1:][down]])
    return a, b


def _compress(parent: torch.Tensor) -> torch.Tensor:
    """Point every pixel at its tree's root (pointer jumping)."""
    while True:
        up = parent[parent]
        if torch.equal(up, parent):
            return parent
        parent = up


def components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected components of a 2-D bool mask: int64 ids = 1 + the flat index of the component's first pixel in
    raster order, 0 background. Not consecutive (see `consecutive`).

    Union-find in whole-array steps: each pair of touching pixels hooks the larger of their roots under the
    smaller, then every pixel jumps to its root; a component ends up under its smallest index in a few rounds.
    """
    a, b = _pairs(mask)
    parent = torch.arange(mask.numel(), device=mask.device, dtype=torch.int64)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not bool(differ.any()):
            break
        lo, hi = torch.minimum(ra, rb)[differ], torch.maximum(ra, rb)[differ]
        parent.scatter_reduce_(0, hi, lo, reduce="amin")
        parent = _compress(parent)
        a, b = a[differ], b[differ]  # pairs already in one tree stay so
    return torch.where(mask, parent.view(mask.shape) + 1, 0)


def consecutive(labels: torch.Tensor) -> torch.Tensor:
    """Ids 1..n in the order of their values, 0 stays 0, as int32: downstream sizes arrays by the largest id."""
    flat = labels.view(-1)
    present = torch.zeros(int(flat.max()) + 1, dtype=torch.int32, device=labels.device)
    present[flat] = 1
    present[0] = 0
    return torch.cumsum(present, 0, dtype=torch.int32)[flat].view(labels.shape)


def _flood(seeds: torch.Tensor, fg: torch.Tensor, interior: torch.Tensor, t: float) -> torch.Tensor:
    """Grow the seeds through `fg`, the most certain interior first, as skimage's watershed does: a labelled pixel
    whose P(interior) is at or above the current level labels its unlabelled neighbours (whatever theirs), to a
    fixed point, then the level drops. Where two seeds reach a pixel at once, the larger id takes it."""
    labels = seeds
    for k in range(FLOOD_LEVELS - 1, -1, -1):
        level = t * k / FLOOD_LEVELS
        while True:
            sources = torch.where(interior >= level, labels, 0)
            new = torch.where(fg & (labels == 0), _neighbour_max(sources), labels)
            if torch.equal(new, labels):
                break
            labels = new
    return labels


def label_instances_torch(footprint: torch.Tensor, separator: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """`fpn_geo.instances.label_instances` on uint8 (h, w) tensors, on their device: consecutive int32 ids."""
    t = threshold_u8(threshold)
    fg = footprint >= t
    if separator is None:
        return consecutive(components(fg))
    interior = footprint - torch.minimum(footprint, separator)
    cores = components(interior >= t)
    size = torch.bincount(cores.view(-1), minlength=fg.numel() + 1)
    seeds = torch.where(size[cores] >= MIN_CORE_PX, cores, 0)
    labels = _flood(seeds, fg, interior, t)
    orphan = fg & (labels == 0)  # blobs with no core: a tiny or thin building that is all separator keeps an id
    if bool(orphan.any()):
        labels = torch.where(orphan, components(orphan) + fg.numel(), labels)
    return consecutive(labels)
