"""Instance labelling: turn footprint (and contact) probabilities into one id per building.

The vectorizer calls ``label_instances``; without a separator map it is plain
connected components. With one (channel 1 of the prediction: P(separator), the class
that marks every building's 1-px inner border and the background between close buildings;
old checkpoints call it "contact") it floods P(interior) = footprint - separator with a
watershed seeded from the interior cores, inside the footprint (P(interior) + P(separator)
above the threshold), so touching and nearly touching buildings come apart.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fpn_geo.errors import ConfigError, InputError

MIN_CORE_PX = 4  # cores smaller than this are noise, not buildings: they would split a roof
_MANY_BLOBS = 300  # above this many blobs to split, one whole-image watershed is faster
_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity: diagonal touches do not merge


def _check_probability(name: str, arr: np.ndarray) -> None:
    """Probabilities travel as uint8 0-255 to keep big scenes small in memory."""
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype != np.uint8:
        got = f"{type(arr).__name__} {getattr(arr, 'dtype', '?')} ndim={getattr(arr, 'ndim', '?')}"
        raise InputError(
            f"{name} is {got}; expected a 2-D uint8 array of probabilities 0-255. "
            f"Convert with (prob * 255).round().astype(np.uint8)."
        )


def threshold_u8(threshold: float) -> float:
    """Map a 0-1 threshold onto the 0-255 scale of the probability arrays."""
    if not 0.0 < float(threshold) <= 1.0:
        raise ConfigError(f"threshold={threshold!r}; expected a probability in (0, 1]. Pass e.g. threshold=0.5.")
    return float(threshold) * 255.0


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Label 4-connected foreground regions 1..n (int32, 0 background); the plain default."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise InputError(
            f"mask has shape {getattr(mask, 'shape', None)}; expected a 2-D array. Pass one band, e.g. mask[0]."
        )
    labels, _ = ndimage.label(mask.astype(bool, copy=False), structure=_FOUR, output=np.int32)
    return labels


def label_components(footprint: np.ndarray, contact: np.ndarray | None = None, threshold: float = 0.5) -> np.ndarray:
    """``label_instances`` without the separator: 4-connected blobs of the footprint above ``threshold``;
    touching buildings stay one."""
    return label_instances(footprint, None, threshold)


def label_instances(footprint: np.ndarray, contact: np.ndarray | None = None, threshold: float = 0.5) -> np.ndarray:
    """One int32 id per building (0 background) from uint8 footprint and separator probabilities.

    ``footprint`` is 1 - P(background), ``contact`` is P(separator) (the name is the pipeline's, kept for
    older checkpoints). Buildings are the footprint above ``threshold``; inside each blob a watershed of
    P(interior) = footprint - separator, seeded from the cores where P(interior) is above ``threshold``,
    splits buildings that touch or nearly touch. A blob with no core keeps one id. Without ``contact``,
    touching buildings stay one component.
    """
    _check_probability("footprint", footprint)
    t = threshold_u8(threshold)
    fg = footprint >= t
    if contact is None:
        return connected_components(fg)
    _check_probability("contact", contact)
    if contact.shape != footprint.shape:
        raise InputError(
            f"contact has shape {contact.shape}; expected the footprint's shape {footprint.shape}. "
            f"Pass both channels of the same prediction."
        )
    blobs, n_blobs = ndimage.label(fg, structure=_FOUR, output=np.int32)
    if n_blobs == 0:
        return blobs
    interior = footprint - np.minimum(footprint, contact)  # max(footprint - separator, 0) without a wider dtype
    seeds_of, n_seeds = _cores(interior >= t)  # interior <= footprint: a core lies in the footprint
    # the blob of each core, and each blob's core count (a 4-connected core lies inside one blob)
    core_px = np.flatnonzero(seeds_of > 0)
    seed_blob = np.zeros(n_seeds + 1, dtype=np.int32)
    seed_blob[seeds_of[core_px]] = blobs.ravel()[core_px]
    per_blob = np.bincount(seed_blob[1:], minlength=n_blobs + 1)
    # Final ids, already consecutive: seeds keep theirs (1..n_seeds, raster order of the cores); a blob with no
    # core (a tiny or thin building that is all separator) gets the next ids, or the vectorizer would lose it.
    blob_id = np.zeros(n_blobs + 1, dtype=np.int32)
    alone = per_blob[seed_blob[1:]] == 1
    blob_id[seed_blob[1:][alone]] = np.flatnonzero(alone).astype(np.int32) + 1
    orphans = np.flatnonzero(per_blob[1:] == 0) + 1
    blob_id[orphans] = np.arange(n_seeds + 1, n_seeds + 1 + len(orphans), dtype=np.int32)
    labels = blob_id[blobs]
    split = np.flatnonzero(per_blob > 1)
    if len(split) == 0:
        return labels
    from skimage.segmentation import watershed  # here: importing skimage takes 0.3 s, and most calls need it

    seeds = seeds_of.reshape(blobs.shape)
    elevation = 255 - interior  # flood from the most certain interior outwards
    if len(split) > _MANY_BLOBS:  # one global flood beats thousands of small calls
        in_split = (per_blob > 1)[blobs]
        flooded = watershed(elevation, markers=np.where(in_split, seeds, 0), mask=in_split, connectivity=1)
        labels[in_split] = flooded[in_split]
        return labels
    boxes = ndimage.find_objects(blobs)
    for i in split:
        box = boxes[i - 1]
        in_blob = blobs[box] == i
        flooded = watershed(elevation[box], markers=np.where(in_blob, seeds[box], 0), mask=in_blob, connectivity=1)
        labels[box][in_blob] = flooded[in_blob]
    return labels


def _cores(core: np.ndarray) -> tuple[np.ndarray, int]:
    """The cores (4-connected, at least MIN_CORE_PX pixels: specks must not split a roof) numbered 1..n in raster
    order, as a flat int32 array, and n."""
    cores, n = ndimage.label(core, structure=_FOUR, output=np.int32)
    keep = np.bincount(cores.ravel(), minlength=n + 1) >= MIN_CORE_PX
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[cores.ravel()], int(keep.sum())
