"""Augmentation, for both trainers: the 8 flips/rotations of the square, and colour, blur and noise.

Geometric changes apply to image and target alike; colour changes to the image only. The classic loop
augments each chip in numpy (``Augment``: dihedral and jitter); the cache trainer augments whole batches on
the device (``dihedral``, ``colour``, ``gaussian_blur`` on torch tensors).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

A = TypeVar("A", np.ndarray, torch.Tensor)


def dihedral(image: A, target: A, k: int, flip: bool) -> tuple[A, A]:
    """Rotate by k*90° and optionally flip left-right, both on their last two axes: a (bands, H, W) chip with
    its (H, W) target in numpy, or an (N, C, H, W) batch with its (N, H, W) targets in torch."""
    if isinstance(image, torch.Tensor) and isinstance(target, torch.Tensor):
        if flip:
            image, target = image.flip(-1), target.flip(-1)
        return (torch.rot90(image, k, (-2, -1)), torch.rot90(target, k, (-2, -1))) if k else (image, target)
    if flip:
        image, target = image[..., ::-1], target[..., ::-1]
    return np.rot90(image, k, axes=(-2, -1)), np.rot90(target, k, axes=(-2, -1))


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


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of (N, C, H, W) ``x``, each channel on its own."""
    r = max(1, math.ceil(2 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def colour(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Per-chip contrast, brightness, per-channel gain, saturation and gamma on 0-255 floats."""
    if amount <= 0:
        return x
    n = x.shape[0]

    def u(*shape):
        return torch.rand(*shape, 1, 1, device=x.device, generator=gen) * 2 - 1

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + amount * u(n, 1)) + mean + amount * 64 * u(n, 1)
    x = x * (1 + 0.5 * amount * u(n, 3))
    gray = x.mean(dim=1, keepdim=True)
    x = gray + (x - gray) * (1 + 2 * amount * u(n, 1)).clamp(min=0)
    x = (x / 255).clamp(0, 1) ** torch.exp(amount * u(n, 1))
    return x * 255
