"""Score fusion of the two branches (Eq. 4): ``S = lam * T(S_V) + (1 - lam) * T(S_A)``.

``T`` is the score transform: ``"softmax"`` (released code: softmax over classes of the unscaled
similarities, temperature 1) or ``"cosine"`` (paper: the raw similarities). Works on torch tensors and
NumPy arrays alike (the tuning code fuses cached ``[N, K]`` score arrays).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Scores = TypeVar("Scores", torch.Tensor, np.ndarray)
TRANSFORMS = ("softmax", "cosine")
#: Softmax temperature of the released code's fusion.
SOFTMAX_TEMPERATURE = 1.0


def score_transform(s: Scores, kind: str, temperature: float = SOFTMAX_TEMPERATURE) -> Scores:
    """Transform scores ``[N, K]`` (classes on the last axis) before fusing.

    Args:
        s: ``[N, K]`` similarities (tensor or array).
        kind: ``"softmax"`` (softmax over classes of ``s / temperature``) or ``"cosine"`` (unchanged).
    """
    if kind == "cosine":
        return s
    if kind != "softmax":
        raise ValueError(f"score_transform: kind={kind!r}; expected one of {TRANSFORMS}")
    if isinstance(s, torch.Tensor):
        return torch.softmax(s / temperature, dim=-1)
    a = np.asarray(s)
    a = (a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)) / temperature
    a = a - a.max(axis=-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


def fuse(s_v: Scores, s_a: Scores, lam: float, transform: str = "softmax") -> Scores:
    """``lam * T(s_v) + (1 - lam) * T(s_a)``, both ``[N, K]``.

    Args:
        s_v: video-branch scores. s_a: attributes-branch scores (same shape and type).
        lam: weight of the video branch in [0, 1].
        transform: ``"softmax"`` or ``"cosine"``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"fuse: lam={lam}; expected a value in [0, 1]")
    if tuple(s_v.shape) != tuple(s_a.shape):
        raise ValueError(f"fuse: score shapes differ, video {tuple(s_v.shape)} vs attributes {tuple(s_a.shape)}")
    return lam * score_transform(s_v, transform) + (1.0 - lam) * score_transform(s_a, transform)

