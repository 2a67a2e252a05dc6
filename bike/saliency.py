"""Video Concept Spotting (VCS, Eq. 5–6): category-dependent temporal saliency and the video logit.

For a video b and a class k, every selected text position l of the class prompt ("word") spreads one
unit of attention over the T frames, ``softmax_t(cos(frame_t, word_l) / tau)``; the saliency of frame
t is the average over the selected words. The class-specific video embedding is the saliency-weighted
sum of the L2-normalised frames, and the logit is its dot product with the L2-normalised class [CLS]
embedding, i.e. ``Σ_t s_bkt · cos(frame_bt, cls_k)`` (the released code: the sum is not
re-normalised). With ``renormalise`` the logit is the cosine of Eq. 2 instead: that dot product
divided by ``‖Σ_t s_bkt · frame_bt/‖frame_bt‖‖``, computed from the frames' Gram matrix ``[B, T, T]``.

Memory: the largest intermediate is ``[B, T, K, L]`` (the word-to-frame similarities); the
``[B, K, T, D]`` weighted frames are never formed because the logit is computed as a saliency-weighted
sum of frame-to-[CLS] cosines.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

#: τ_vcs of the released code.
DEFAULT_TAU = 0.01


def _check_inputs(frames: torch.Tensor, tokens: torch.Tensor, cls: torch.Tensor, token_mask: Optional[torch.Tensor]) -> None:
    if frames.ndim != 3:
        raise ValueError(f"video_concept_spotting: frames must be [B, T, D], got {tuple(frames.shape)}")
    if tokens.ndim != 3:
        raise ValueError(f"video_concept_spotting: tokens must be [K, L, D], got {tuple(tokens.shape)}")
    if cls.ndim != 2 or cls.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"video_concept_spotting: cls must be [K, D] with K={tokens.shape[0]}, got {tuple(cls.shape)}"
        )
    d = frames.shape[-1]
    if tokens.shape[-1] != d or cls.shape[-1] != d:
        raise ValueError(
            f"video_concept_spotting: embedding widths differ (frames {d}, tokens {tokens.shape[-1]}, cls {cls.shape[-1]})"
        )
    if token_mask is not None:
        if token_mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"video_concept_spotting: token_mask must be [K, L]={tuple(tokens.shape[:2])}, got {tuple(token_mask.shape)}"
            )
        if token_mask.dtype != torch.bool:
            raise ValueError(f"video_concept_spotting: token_mask must be bool, got {token_mask.dtype}")
        empty = (~token_mask.any(dim=1)).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"video_concept_spotting: token_mask selects no position for classes {empty.tolist()[:10]}")


def video_concept_spotting(
    frames: torch.Tensor,
    tokens: torch.Tensor,
    cls: torch.Tensor,
    token_mask: Optional[torch.Tensor] = None,
    tau: float = DEFAULT_TAU,
    return_saliency: bool = False,
    renormalise: bool = False,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """VCS logits (and saliency).

    Args:
        frames: ``[B, T, D]`` frame embeddings (after the temporal module, if any).
        tokens: ``[K, L, D]`` per-position text features of the K class prompts.
        cls: ``[K, D]`` the class [CLS] embeddings (the recognition vectors).
        token_mask: ``[K, L]`` bool, the positions that act as words; ``None`` = every position (the
            released code's choice).
        tau: softmax temperature over frames.
        return_saliency: also return the saliency.
        renormalise: divide by the norm of the saliency-weighted video embedding (Eq. 2's cosine; the
            ``paper`` profile) instead of leaving it as the released code does.

    Returns:
        logits ``[B, K]`` (unscaled, in [-1, 1]); with ``return_saliency`` also saliency ``[B, K, T]``
        (each ``[b, k]`` row sums to 1).
    """
    _check_inputs(frames, tokens, cls, token_mask)
    b, t, d = frames.shape
    f = F.normalize(frames, dim=-1)
    c = F.normalize(cls, dim=-1)
    if token_mask is not None:
        # Only positions some class selects take part (the words sit in a few columns).
        keep = token_mask.any(dim=0)
        tokens, token_mask = tokens[:, keep], token_mask[:, keep]
    k, l = tokens.shape[:2]
    w = F.normalize(tokens, dim=-1) * (1.0 / tau)
    # [B, T, K, L] with T in the middle: a plain matmul, and the softmax over frames then runs over a
    # non-innermost axis with a long contiguous inner axis (an order of magnitude faster on CPU than
    # a softmax over a short innermost axis of T).
    sims = (f.reshape(b * t, d) @ w.reshape(k * l, d).t()).view(b, t, k, l)
    att = torch.softmax(sims, dim=1)
    if token_mask is None:
        sal = att.mean(dim=-1)  # [B, T, K]
    else:
        weights = token_mask.to(att.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True)  # [K, L'], rows sum to 1
        sal = (att * weights).sum(dim=-1)
    frame_cls = f @ c.t()  # [B, T, K] cos(frame, cls)
    logits = (sal * frame_cls).sum(dim=1)  # [B, K]
    if renormalise:
        gram = f @ f.transpose(1, 2)  # [B, T, T]
        sq_norm = torch.einsum("btk,bts,bsk->bk", sal, gram, sal)  # ‖Σ_t s_t f_t‖² [B, K]
        logits = logits / sq_norm.clamp_min(1e-12).sqrt()
    if return_saliency:
        return logits, sal.transpose(1, 2)
    return logits
