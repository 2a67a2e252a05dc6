"""Score fusion of the two branches (Eq. 4): ``S = lam * T(S_V) + (1 - lam) * T(S_A)``.

The one implementation: evaluation (``bike.engine.eval_loop``), the tuning code
(``harness.lambda_exact``, ``harness.tuning``) and ``bikebench table6 --lambda-from`` all fuse through
:func:`fuse` (or :func:`score_transform` + :func:`combine` when the transformed sides are kept).

``T`` is the score transform: ``"softmax"`` (released code: softmax over classes of the unscaled
similarities, temperature 1) or ``"cosine"`` (paper: the raw similarities). Video scores averaged
over views as per-view softmax (``score_kind="probabilities"``: multi-view ``softmax_mean``) already
are the softmax side and are not softmaxed again; ``"cosine"`` cannot be applied to them.

Works on torch tensors (``torch.softmax``) and NumPy arrays (:func:`softmax`); ``dtype=np.float64``
is the float64 path every cached-score computation takes.
"""

from __future__ import annotations

import sys
from typing import Literal, Optional, TypeVar

import numpy as np

from bike.config import profile_default

Scores = TypeVar("Scores", "torch.Tensor", np.ndarray)  # noqa: F821  (torch is not imported here: bike.metrics uses softmax)
TRANSFORMS = ("softmax", "cosine")
#: The transform of the ``official`` profile (``FusionConfig.transform``'s default; ``paper``: cosine).
DEFAULT_TRANSFORM: str = profile_default("fusion", "transform")
ScoreKind = Literal["logits", "probabilities"]
SCORE_KINDS = ("logits", "probabilities")
#: Softmax temperature of the released code's fusion.
SOFTMAX_TEMPERATURE = 1.0
#: Elements per chunk of :func:`softmax` (512 KiB of float64: the temporaries stay in cache, which on
#: 2 cores is ~2x faster than whole-matrix passes). A row's result does not depend on the chunking.
CHUNK_ELEMENTS = 1 << 16


def softmax(x: np.ndarray, temperature: float = 1.0, dtype: Optional[type] = None) -> np.ndarray:
    """Softmax over the last axis of ``x / temperature`` (NumPy), computed in ``dtype``.

    Args:
        x: ``[..., K]`` scores.
        dtype: the arithmetic and output dtype; None keeps ``x``'s floating dtype (float64 for integers).
    """
    a = np.asarray(x)
    if dtype is None:
        dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64

    def block(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=dtype)
        if temperature != 1.0:
            z = z / temperature
        z = z - z.max(axis=-1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=-1, keepdims=True)
        return z

    if a.ndim < 2:
        return block(a)
    out = np.empty(a.shape, dtype=dtype)
    rows = max(1, CHUNK_ELEMENTS // max(1, int(np.prod(a.shape[1:]))))
    for start in range(0, a.shape[0], rows):
        out[start : start + rows] = block(a[start : start + rows])
    return out


def check_transform(kind: str, score_kind: ScoreKind = "logits") -> None:
    """Refuse an unknown transform, an unknown score kind, and ``"cosine"`` on view-averaged probabilities."""
    if kind not in TRANSFORMS:
        raise ValueError(f"score_transform: kind={kind!r}; expected one of {TRANSFORMS}")
    if score_kind not in SCORE_KINDS:
        raise ValueError(f"score_transform: score_kind={score_kind!r}; expected one of {SCORE_KINDS}")
    if score_kind == "probabilities" and kind != "softmax":
        raise ValueError(
            f"fusion transform {kind!r} needs unscaled logits, but the video scores are view-averaged probabilities "
            "(already the softmax side); evaluate with eval.view_aggregation=logit_mean"
        )


def score_transform(
    s: Scores,
    kind: str = DEFAULT_TRANSFORM,
    temperature: float = SOFTMAX_TEMPERATURE,
    *,
    score_kind: ScoreKind = "logits",
    dtype: Optional[type] = None,
) -> Scores:
    """``T(s)``: transform scores ``[N, K]`` (classes on the last axis) before fusing.

    Args:
        s: ``[N, K]`` scores (tensor or array).
        kind: ``"softmax"`` (softmax over classes of ``s / temperature``) or ``"cosine"`` (unchanged).
        score_kind: ``"logits"``, or ``"probabilities"`` (view-averaged softmax: already the softmax
            side, returned as they are; ``"cosine"`` is refused).
        dtype: NumPy input only: the dtype of the result (``np.float64``: the float64 path); None keeps
            ``s``'s floating dtype, and ``s`` itself where nothing is computed.
    """
    check_transform(kind, score_kind)
    torch = sys.modules.get("torch")  # a tensor means torch is imported
    if torch is not None and isinstance(s, torch.Tensor):
        return torch.softmax(s / temperature, dim=-1) if score_kind == "logits" and kind == "softmax" else s
    if score_kind == "probabilities" or kind == "cosine":
        return s if dtype is None else np.asarray(s, dtype=dtype)
    return softmax(s, temperature, dtype)


def check_lambda(lam: float) -> float:
    """λ, the weight of the video branch, must lie in [0, 1]."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"fusion: lam={lam}; expected a value in [0, 1] (the weight of the video branch)")
    return lam


def combine(t_v: Scores, t_a: Scores, lam: float) -> Scores:
    """``lam * t_v + (1 - lam) * t_a`` of already transformed sides (see :func:`score_transform`)."""
    check_lambda(lam)
    if tuple(t_v.shape) != tuple(t_a.shape):
        raise ValueError(f"fuse: score shapes differ, video {tuple(t_v.shape)} vs attributes {tuple(t_a.shape)}")
    return lam * t_v + (1.0 - lam) * t_a


def fuse(
    s_v: Scores,
    s_a: Scores,
    lam: float,
    transform: str = DEFAULT_TRANSFORM,
    *,
    kind_v: ScoreKind = "logits",
    kind_a: ScoreKind = "logits",
    dtype: Optional[type] = None,
) -> Scores:
    """Eq. 4: ``lam * T(s_v) + (1 - lam) * T(s_a)``, both ``[N, K]``.

    Args:
        s_v: video-branch scores. s_a: attributes-branch scores (same shape and type).
        lam: weight of the video branch in [0, 1].
        transform: ``"softmax"`` or ``"cosine"``.
        kind_v, kind_a: ``score_kind`` of each side (see :func:`score_transform`).
        dtype: NumPy input only: the dtype of the transforms and the sum (``np.float64`` on cached scores).
    """
    check_lambda(lam)
    if tuple(s_v.shape) != tuple(s_a.shape):
        raise ValueError(f"fuse: score shapes differ, video {tuple(s_v.shape)} vs attributes {tuple(s_a.shape)}")
    t_v = score_transform(s_v, transform, score_kind=kind_v, dtype=dtype)
    return combine(t_v, score_transform(s_a, transform, score_kind=kind_a, dtype=dtype), lam)
