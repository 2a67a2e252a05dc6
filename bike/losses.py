"""The multi-positive symmetric contrastive objective (Eq. 7–9) and the logit scale.

Training logits are ``[B, B]``: rows are the batch's videos, columns the batch's own class prompts
(duplicates included), already multiplied by the logit scale. Every pair with the same label is a
positive. Two forms:

* ``"soft_kl"`` (released code): KL divergence from ``log_softmax(logits)`` to the soft target
  ``softmax(target_scale * G)`` with ``G[i, j] = 1`` for same-label pairs, ``batchmean`` over rows;
  computed for the rows and for the columns (``logits.T``) and averaged. The negatives keep a share
  of the target mass that depends on the batch size (≈1.1 % per row at B = 256 with distinct labels).
* ``"ce"`` (paper, Eq. 7): per row, the mean over its positives of ``-log_softmax``; averaged over
  rows; both directions, halved.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOSS_FORMS = ("soft_kl", "ce")
#: Scale of the same-label indicator inside the soft target of the released code.
DEFAULT_TARGET_SCALE = 10.0
#: CLIP's initial logit scale, ln(1 / 0.01).
DEFAULT_LOGIT_SCALE_INIT = math.log(100.0)


def positive_mask(labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``G[i, j] = labels[i] == labels[j]`` as ``[B, B]`` floats (``labels``: ``[B]``)."""
    return (labels.view(-1, 1) == labels.view(1, -1)).to(dtype)


def soft_kl_targets(
    labels: torch.Tensor, target_scale: float = DEFAULT_TARGET_SCALE, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The released code's soft target ``softmax(target_scale * G)`` over each row, ``[B, B]``."""
    return torch.softmax(target_scale * positive_mask(labels, dtype), dim=1)


def _soft_kl_one_side(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=1)
    return F.kl_div(log_p, targets, reduction="batchmean")


def _ce_one_side(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=1)
    per_row = -(log_p * pos).sum(dim=1) / pos.sum(dim=1)
    return per_row.mean()


def multi_positive_contrastive(
    logits: torch.Tensor,
    labels: torch.Tensor,
    form: str = "soft_kl",
    target_scale: float = DEFAULT_TARGET_SCALE,
) -> torch.Tensor:
    """Symmetric multi-positive contrastive loss.

    Args:
        logits: ``[B, B]`` scaled similarities (rows videos, columns the batch's class prompts).
        labels: ``[B]`` class index of each row (and of each column's prompt).
        form: ``"soft_kl"`` (released code) or ``"ce"`` (paper).
        target_scale: the soft target's scale (``soft_kl`` only).

    Returns:
        A scalar loss.
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"multi_positive_contrastive: logits must be [B, B], got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"multi_positive_contrastive: labels must be [B] with B={logits.shape[0]}, got {tuple(labels.shape)}"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the loss in full precision under mixed-precision training
    if form == "soft_kl":
        # G is symmetric, so the columns' target softmax(target_scale * G.T) (row-wise) is the same matrix
        targets = soft_kl_targets(labels.to(logits.device), target_scale, logits.dtype)
        return 0.5 * (_soft_kl_one_side(logits, targets) + _soft_kl_one_side(logits.t(), targets))
    if form == "ce":
        pos = positive_mask(labels.to(logits.device), logits.dtype)
        return 0.5 * (_ce_one_side(logits, pos) + _ce_one_side(logits.t(), pos))
    raise ValueError(f"multi_positive_contrastive: form={form!r}; expected one of {LOSS_FORMS}")


class LogitScale(nn.Module):
    """``exp(s)`` with ``s`` initialised at ``init`` (ln 100); learnable (released code) or fixed (paper).

    No clamp, as in the released code. The fixed version holds ``s`` in a buffer (no gradient, not
    handed to the optimiser).
    """

    def __init__(self, init: float = DEFAULT_LOGIT_SCALE_INIT, learnable: bool = True) -> None:
        super().__init__()
        value = torch.tensor(float(init))
        self.learnable = learnable
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)

    def forward(self) -> torch.Tensor:
        """The scale, a 0-d tensor."""
        return self.log_scale.exp()
