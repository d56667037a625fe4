"""The tracer's whole-array steps (`fpn_geo.trace`) in torch, so a CUDA block's labels are traced where they are
and only the rings' corners come back to the host, not the block's labels.

The steps are the numpy tracer's, one for one: unit edges from comparing the padded raster with itself shifted,
the next edge at every vertex from the 2x2 pixels around it, the edge after each found by a sorted search, then
pointer doubling to the next corner and to each ring's smallest corner, and list ranking for the corners' order.
`corner_rings` returns exactly what `fpn_geo.trace.corner_rings` returns (the tests hold it to that on CPU
tensors); the host then cuts pinched rings and finds each hole's outer ring (`fpn_geo.trace.polygons_of_corners`),
the rare cases that stay in numpy and shapely. `block_outlines_torch` adds what else a block's polygons need from its
pixels (per-label probability sums, the background's parts, where outlines meet), so a CUDA block sends the host
its corners and a few small arrays (`fpn_geo.vectorize.Outlines`).
"""

from __future__ import annotations

import numpy as np
import torch

from fpn_geo.instances_gpu import components, consecutive
from fpn_geo.trace import DOWN, LEFT, RIGHT, UP, polygons_of_corners
from fpn_geo.vectorize import Outlines, meeting_points

_DX = (1, 0, -1, 0)  # per direction, as fpn_geo.trace._STEP
_DY = (0, 1, 0, -1)


def _edges(padded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per direction, in raster order of their start vertex: (start x, start y, label) of every unit edge."""
    w2 = padded.shape[1]
    flat = padded.reshape(-1)
    found: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for step, (first, second) in ((w2, (LEFT, RIGHT)), (1, (DOWN, UP))):
        f = torch.nonzero(flat[:-step] != flat[step:]).squeeze(1)  # ascending, as np.flatnonzero
        a, b = flat[f], flat[f + step]
        r, c = torch.div(f, w2, rounding_mode="floor"), f % w2
        if step == 1:
            found[first], found[second] = (c, r - 1, a), (c, r, b)
        else:
            found[first], found[second] = (c, r, a), (c - 1, r, b)
    out = []
    for d in range(4):
        x, y, lab = found[d]
        keep = lab > 0
        out.append((x[keep], y[keep], lab[keep]))
    return out


def _linked_edges(padded: torch.Tensor, w1: int) -> tuple[torch.Tensor, ...]:
    """Every unit edge's start x, y, label, the index of the edge after it and whether it turns there."""
    per_direction = _edges(padded)
    device = padded.device
    vids = [y * w1 + x for x, y, _ in per_direction]
    sizes = [len(v) for v in vids]
    x = torch.cat([e[0] for e in per_direction])
    y = torch.cat([e[1] for e in per_direction])
    lab = torch.cat([e[2] for e in per_direction])
    d = torch.repeat_interleave(torch.arange(4, device=device), torch.tensor(sizes, device=device))
    ex = x + torch.tensor(_DX, device=device)[d]
    ey = y + torch.tensor(_DY, device=device)[d]
    w2 = padded.shape[1]
    flat = padded.reshape(-1)
    base = ey * w2 + ex  # the pixel north-west of the vertex the edge ends at
    nw, ne, sw, se = 0, 1, w2, w2 + 1
    right = torch.tensor([se, sw, nw, ne], device=device)[d]
    left = torch.tensor([ne, se, sw, nw], device=device)[d]
    turn = torch.where(flat[base + right] != lab, 1, torch.where(flat[base + left] != lab, 0, 3))
    nd = (d + turn) % 4
    succ = torch.empty(len(x), dtype=torch.int64, device=device)
    end = ey * w1 + ex
    offset = 0
    for k in range(4):
        sel = nd == k
        succ[sel] = offset + torch.searchsorted(vids[k], end[sel])
        offset += sizes[k]
    return x, y, lab, succ, nd != d


def _cycles(nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a permutation made of cycles: each element's cycle (its smallest member) and its place after it."""
    n = len(nxt)
    idx = torch.arange(n, device=nxt.device)
    head, jump = idx, nxt.clone()
    while True:
        new = torch.minimum(head, head[jump])
        if torch.equal(new, head):
            break
        head, jump = new, jump[jump]
    last = nxt == head
    to_end = (~last).to(torch.int64)
    jump = torch.where(last, idx, nxt)
    while True:
        further = jump[jump]
        if torch.equal(further, jump):
            break
        to_end = to_end + to_end[jump]
        jump = further
    size = torch.bincount(head, minlength=n)[head]
    return head, size - 1 - to_end


def _corner_rings(succ: torch.Tensor, turns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges that start at a corner, ring after ring in ring order, and the ring of each."""
    n = len(succ)
    corner = torch.zeros(n, dtype=torch.bool, device=succ.device)
    corner[succ[turns]] = True
    jump = succ.clone()
    while True:
        at = corner[jump]
        if bool(at.all()):
            break
        jump = torch.where(at, jump, jump[jump])
    ids = torch.nonzero(corner).squeeze(1)
    rank_of = torch.full((n,), -1, dtype=torch.int64, device=succ.device)
    rank_of[ids] = torch.arange(len(ids), device=succ.device)
    ring, place = _cycles(rank_of[jump[ids]])
    order = torch.argsort(ring * len(ids) + place)  # unique keys: the order np.lexsort((place, ring)) gives
    return ids[order], ring[order]


def corner_rings(labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`fpn_geo.trace.corner_rings` on a 2-D integer tensor, on its device: the corners' x, y, label and ring id,
    ring after ring, copied to the host (int64, and the labels' own dtype)."""
    padded = torch.nn.functional.pad(labels.unsqueeze(0), (1, 1, 1, 1)).squeeze(0)
    x, y, lab, succ, turns = _linked_edges(padded, labels.shape[1] + 1)
    if len(x) == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, _numpy_dtype(labels)), empty
    ids, ring = _corner_rings(succ, turns)
    return x[ids].cpu().numpy(), y[ids].cpu().numpy(), lab[ids].cpu().numpy(), ring.cpu().numpy()


def _numpy_dtype(t: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=t.dtype).numpy().dtype


def trace_labels_torch(labels: torch.Tensor, x0: int = 0, y0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`fpn_geo.trace.trace_labels` for a label tensor: the same polygons, traced on the tensor's device."""
    return polygons_of_corners(*corner_rings(labels), labels.shape[1] + 1, x0, y0)


def block_outlines_torch(labels: torch.Tensor, footprint: torch.Tensor, with_background: bool) -> Outlines:
    """`fpn_geo.vectorize.block_outlines` on (h, w) tensors, on their device: the same arrays, copied to the host.

    The background's 4-connected parts are numbered in raster order of their first pixel (`consecutive` of
    `components`), as `scipy.ndimage.label` numbers them; sums of uint8 in float64 are exact in any order.
    """
    mask = labels > 0
    n = int(labels.max()) if labels.numel() else 0
    ids = labels.reshape(-1).to(torch.int64)
    weights = torch.where(mask, footprint, 0).reshape(-1).to(torch.float64)
    psum = torch.bincount(ids, weights=weights, minlength=n + 1)
    count = torch.bincount(ids, minlength=n + 1).to(torch.float64)
    psum[0], count[0] = 0, 0
    every, nodes = labels, None
    if n and with_background:
        every = torch.where(mask, labels, consecutive(components(~mask)) + n)
        meet = meeting_points(torch.nn.functional.pad(every.unsqueeze(0), (1, 1, 1, 1)).squeeze(0))
        nodes = (_flat_true(meet), _flat_true(meet.t()))
    if n:
        corners = corner_rings(every)
    else:
        empty = np.empty(0, np.int64)
        corners = (empty, empty, empty, empty)
    return Outlines(corners, (labels.shape[0], labels.shape[1]), n, psum.cpu().numpy(), count.cpu().numpy(), nodes)


def _flat_true(mask: torch.Tensor) -> np.ndarray:
    """np.flatnonzero of a bool tensor, found on its device."""
    return torch.nonzero(mask.reshape(-1)).squeeze(1).cpu().numpy()
