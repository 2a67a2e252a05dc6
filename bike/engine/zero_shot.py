"""Zero-shot scoring: the authors' frame-level path, and the protocol bookkeeping.

Frame-level path (``eval.zero_shot_path = "frame"``, the official UCF/HMDB/ActivityNet zero-shot):
raw (unnormalised) per-frame image features, per-frame softmax at scale 100 against the L2-normalised
[CLS] class embeddings, averaged over frames — no temporal transformer, no VCS. Because the raw
frame features keep their norm, the effective temperature varies per frame, as in the released code.

Full-model path (``"full"``, the official K600 zero-shot): the video branch's logits.

Half-class splits recompute the per-frame softmax over each split's classes (the released
``multi_split_test``) from cached frame features — see :func:`bike.engine.caches.half_class_accuracy`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Scale of the per-frame softmax in the released zero-shot test (CLIP's 100).
FRAME_SOFTMAX_SCALE = 100.0


def frame_level_scores(frame_emb: torch.Tensor, class_emb: torch.Tensor, scale: float = FRAME_SOFTMAX_SCALE) -> torch.Tensor:
    """Per-video scores ``[B, K]``: mean over frames of ``softmax(scale · frame_raw @ normalise(cls).T)``.

    Args:
        frame_emb: ``[B, T, D]`` raw image-tower features (not normalised).
        class_emb: ``[K, D]`` class [CLS] embeddings (normalised here).
    """
    if frame_emb.ndim != 3 or class_emb.ndim != 2 or frame_emb.shape[-1] != class_emb.shape[-1]:
        raise ValueError(
            f"frame_level_scores: expected frame_emb [B, T, D] and class_emb [K, D], got "
            f"{tuple(frame_emb.shape)} and {tuple(class_emb.shape)}"
        )
    c = F.normalize(class_emb.float(), dim=-1)
    logits = scale * torch.einsum("btd,kd->btk", frame_emb.float(), c)
    return logits.softmax(dim=-1).mean(dim=1)


def frame_level_scores_np(frame_emb: np.ndarray, class_emb: np.ndarray, scale: float = FRAME_SOFTMAX_SCALE) -> np.ndarray:
    """:func:`frame_level_scores` on NumPy arrays (float64 result ``[B, K]``)."""
    fe = torch.from_numpy(np.array(frame_emb, dtype=np.float32))  # a writable copy (inputs may be memory maps)
    ce = torch.from_numpy(np.array(class_emb, dtype=np.float32))
    out = frame_level_scores(fe, ce, scale)
    return out.double().numpy()
