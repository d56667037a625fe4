"""Loss: cross-entropy plus soft Dice over the foreground classes, both ignoring label 255."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fpn_geo.train.targets import IGNORE


def soft_dice(
    logits: torch.Tensor, target: torch.Tensor, classes: tuple[int, ...], ignore: int = IGNORE, eps: float = 1.0
) -> torch.Tensor:
    """1 - mean Dice of the given classes, computed over the whole batch (so empty chips do not explode it)."""
    probs = logits.float().softmax(dim=1)
    valid = (target != ignore).unsqueeze(1)
    safe = torch.where(target == ignore, torch.zeros_like(target), target)
    onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float()
    idx = list(classes)
    p = probs[:, idx] * valid
    t = onehot[:, idx] * valid
    inter = (p * t).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + t.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


class CEDiceLoss(nn.Module):
    """``CE(weights) + dice_weight * Dice(foreground classes)``; returns the total and its parts for logging."""

    weight: torch.Tensor  # a buffer: it moves with .to(device)

    def __init__(self, class_weights: tuple[float, ...], dice_weight: float = 1.0, ignore: int = IGNORE) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor(class_weights, dtype=torch.float32))
        self.dice_weight, self.ignore = dice_weight, ignore
        self.dice_classes = tuple(range(1, len(class_weights)))

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total and its parts (detached), all on the device: nothing is read back to the host here."""
        ce = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore)
        dice = soft_dice(logits, target, self.dice_classes, self.ignore) if self.dice_weight else ce.new_zeros(())
        return ce + self.dice_weight * dice, {"ce": ce.detach(), "dice": dice.detach()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = self.terms(logits, target)
        return total, {k: float(v) for k, v in parts.items()}
