"""Optimiser and learning-rate schedule of the BIKE recipe (appendix Table A.1, official code).

- AdamW with two learning-rate groups: the pretrained CLIP layers (both towers and CLIP's
  ``logit_scale``) at ``lr_clip`` and the new layers (temporal transformer, attribute heads) at
  ``lr_new``. Weight decay applies to every parameter, biases, norms and the logit scale included, as
  in the official code.
- Linear warm-up from 0 over ``warmup_epochs``, then cosine to 0 at ``epochs``, evaluated at a
  fractional epoch (``epoch + i / iters_per_epoch``) before every iteration.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from bike.config import TrainConfig

CLIP_GROUP = "clip"
NEW_GROUP = "new"


def split_parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], is_pretrained: Callable[[str], bool]
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split trainable ``(name, param)`` pairs into (pretrained CLIP, new) by ``is_pretrained(name)``.

    Frozen parameters (``requires_grad=False``) are left out of both.
    """
    clip, new = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        (clip if is_pretrained(name) else new).append((name, p))
    return clip, new


def build_optimizer(
    model: nn.Module, train: TrainConfig, is_pretrained: Callable[[str], bool]
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` in two groups (``clip``: ``lr_clip``, ``new``: ``lr_new``).

    Each group records its ``name`` and the names of its parameters (``param_names``) so that a
    checkpoint can be checked against the model it is loaded into. Empty groups are left out.
    """
    clip, new = split_parameter_groups(model.named_parameters(), is_pretrained)
    groups = []
    for name, members, lr in ((CLIP_GROUP, clip, train.lr_clip), (NEW_GROUP, new, train.lr_new)):
        if members:
            groups.append(
                {
                    "params": [p for _, p in members],
                    "lr": lr,
                    "initial_lr": lr,
                    "name": name,
                    "param_names": [n for n, _ in members],
                }
            )
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters (is every module frozen?)")
    return torch.optim.AdamW(groups, betas=tuple(train.betas), weight_decay=train.weight_decay)


def warmup_cosine_factor(epoch: float, warmup_epochs: float, total_epochs: float) -> float:
    """Multiplier of the base learning rate at a (fractional) ``epoch``.

    ``epoch / warmup_epochs`` during warm-up (0 at the first iteration, as in the official code), then
    ``(1 + cos(π·p)) / 2`` with ``p = (epoch − warmup) / (total − warmup)`` clamped to [0, 1].
    """
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    span = total_epochs - warmup_epochs
    progress = 1.0 if span <= 0 else min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets every group's lr to ``initial_lr × warmup_cosine_factor(epoch)`` at each :meth:`step`."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_epochs: float, total_epochs: float):
        if total_epochs <= 0:
            raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
        self.optimizer = optimizer
        self.warmup_epochs = float(warmup_epochs)
        self.total_epochs = float(total_epochs)
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_epoch: Optional[float] = None

    def step(self, epoch: float) -> list[float]:
        """Set the learning rates for the (fractional) ``epoch``; returns them per group."""
        factor = warmup_cosine_factor(epoch, self.warmup_epochs, self.total_epochs)
        lrs = [base * factor for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.last_epoch = float(epoch)
        return lrs

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {
            "warmup_epochs": self.warmup_epochs,
            "total_epochs": self.total_epochs,
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.warmup_epochs = float(state["warmup_epochs"])
        self.total_epochs = float(state["total_epochs"])
        self.base_lrs = list(state["base_lrs"])
        self.last_epoch = state["last_epoch"]
        if self.last_epoch is not None:
            self.step(self.last_epoch)
