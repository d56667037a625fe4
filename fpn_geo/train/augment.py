"""Augmentation of a chip: the 8 flips/rotations of the square, and mild brightness/contrast jitter.

Geometric changes apply to image and target alike; colour changes to the image only.
"""

from __future__ import annotations

import numpy as np


def dihedral(image: np.ndarray, target: np.ndarray, k: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by k*90° and optionally flip left-right; image is (bands, H, W), target (H, W)."""
    if flip:
        image, target = image[:, :, ::-1], target[:, ::-1]
    return np.rot90(image, k, axes=(1, 2)), np.rot90(target, k)


def jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Contrast x(1±amount) around the chip mean, brightness ±amount of the chip's range; values in digital numbers."""
    if amount <= 0:
        return image
    mean = image.mean(axis=(1, 2), keepdims=True)
    contrast = 1.0 + rng.uniform(-amount, amount)
    spread = float(image.max() - image.min()) or 1.0
    brightness = rng.uniform(-amount, amount) * spread
    return (image - mean) * contrast + mean + brightness


class Augment:
    """Random dihedral transform plus jitter; pass to ChipDataset as ``transform``."""

    def __init__(self, jitter: float = 0.1, seed: int = 0) -> None:
        self.amount = jitter
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image, target = dihedral(image, target, int(self.rng.integers(4)), bool(self.rng.integers(2)))
        return jitter(image, self.amount, self.rng).astype(np.float32, copy=False), target
