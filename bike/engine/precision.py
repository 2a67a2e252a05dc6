"""Mixed precision: autocast context and gradient scaler from ``TrainConfig.precision``.

On CUDA, ``bf16`` and ``fp16`` run the forward pass under ``torch.autocast``; ``fp16`` also scales the
loss with a ``GradScaler``. On CPU every precision runs in fp32 (CPU autocast is slow and not what the
published numbers used); the scaler is then a disabled no-op so the code path stays the same.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def effective_precision(precision: Precision, device: torch.device | str) -> Precision:
    """The precision actually used: the field on CUDA, ``fp32`` elsewhere."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {precision!r}")
    return precision if torch.device(device).type == "cuda" else "fp32"


def autocast(precision: Precision, device: torch.device | str) -> ContextManager:
    """``torch.autocast`` for bf16/fp16 on CUDA; a null context otherwise."""
    eff = effective_precision(precision, device)
    if eff == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=_DTYPES[eff])


def make_grad_scaler(precision: Precision, device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler enabled only for fp16 on CUDA (a pass-through otherwise)."""
    enabled = effective_precision(precision, device) == "fp16"
    return torch.amp.GradScaler("cuda", enabled=enabled)
