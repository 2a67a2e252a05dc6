"""The video branch (Category-to-Video): frame embeddings + class text features -> logits ``[B, K]``.

Frame embeddings ``[B, T, D]`` from the image tower optionally pass the temporal transformer, then
meet the class text features either by mean pooling (cosine of the pooled, normalised video with the
class vector) or by Video Concept Spotting (``bike.saliency``). The logits are unscaled (cosine-like);
the loss multiplies them by the logit scale.

Table 6b variants: ``saliency_source="cls"`` spots with the [CLS] embedding as the single query
instead of the words; ``recognition_source="words"`` uses the mean of the normalised word embeddings
as the class vector instead of [CLS]: the class-name tokens (``recognition_tokens="words"``, the
paper's "Word Emb.") or all 77 positions, padding included (``"all"``).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from bike.backbone import TextFeatures
from bike.saliency import DEFAULT_TAU, video_concept_spotting
from bike.temporal import DEFAULT_MAX_LEN, RELEASED_LN_EPS, TemporalTransformer, mean_pool

_CHOICES = {
    "temporal": ("none", "transformer"),
    "interaction": ("mean", "vcs"),
    "vcs_tokens": ("all", "words"),
    "saliency_source": ("words", "cls"),
    "recognition_source": ("cls", "words"),
    "recognition_tokens": ("words", "all"),
}


class VideoBranch(nn.Module):
    """Temporal module + video–category interaction.

    Args:
        width: D, the embedding width.
        temporal: ``"none"`` or ``"transformer"`` (6-layer temporal transformer, Table 6a "Transf").
        temporal_layers: blocks of the temporal transformer.
        interaction: ``"mean"`` (mean pool) or ``"vcs"`` (Video Concept Spotting).
        vcs_tokens: text positions that act as words: ``"all"`` 77 positions (released code) or
            ``"words"`` the class-name tokens (paper; needs ``word_mask``).
        vcs_tau: softmax temperature over frames.
        vcs_renormalise: VCS logit as a cosine (Eq. 2; paper) instead of the released dot product.
        saliency_source: ``"words"`` or ``"cls"`` (one query, the [CLS] embedding).
        recognition_source: ``"cls"`` or ``"words"`` (mean of the normalised word embeddings).
        recognition_tokens: which positions that mean averages: ``"words"`` the class-name tokens
            (needs ``word_mask``) or ``"all"`` 77 positions.
        max_frames: rows of the temporal position table.
        temporal_heads: attention heads (default width // 64).
    """

    def __init__(
        self,
        width: int,
        temporal: str = "transformer",
        temporal_layers: int = 6,
        interaction: str = "vcs",
        vcs_tokens: str = "all",
        vcs_tau: float = DEFAULT_TAU,
        vcs_renormalise: bool = False,
        saliency_source: str = "words",
        recognition_source: str = "cls",
        recognition_tokens: str = "words",
        max_frames: int = DEFAULT_MAX_LEN,
        temporal_heads: Optional[int] = None,
        temporal_ln_eps: float = RELEASED_LN_EPS,
    ) -> None:
        super().__init__()
        args = dict(
            temporal=temporal,
            interaction=interaction,
            vcs_tokens=vcs_tokens,
            saliency_source=saliency_source,
            recognition_source=recognition_source,
            recognition_tokens=recognition_tokens,
        )
        for key, value in args.items():
            if value not in _CHOICES[key]:
                raise ValueError(f"VideoBranch: {key}={value!r}; expected one of {_CHOICES[key]}")
        if vcs_tau <= 0:
            raise ValueError(f"VideoBranch: vcs_tau={vcs_tau}; expected > 0")
        self.width = width
        self.interaction = interaction
        self.vcs_tokens = vcs_tokens
        self.vcs_tau = vcs_tau
        self.vcs_renormalise = vcs_renormalise
        self.saliency_source = saliency_source
        self.recognition_source = recognition_source
        self.recognition_tokens = recognition_tokens
        self.temporal: Optional[TemporalTransformer] = (
            TemporalTransformer(width, layers=temporal_layers, heads=temporal_heads, max_len=max_frames,
                                ln_eps=temporal_ln_eps)
            if temporal == "transformer"
            else None
        )

    @classmethod
    def from_config(cls, model_cfg: Any, width: int) -> "VideoBranch":
        """Build from a :class:`bike.config.ModelConfig` (``temporal``, ``interaction``, ``vcs_*``...)."""
        return cls(
            width,
            temporal=model_cfg.temporal,
            temporal_layers=model_cfg.temporal_layers,
            interaction=model_cfg.interaction,
            vcs_tokens=model_cfg.vcs_tokens,
            vcs_tau=model_cfg.vcs_tau,
            vcs_renormalise=model_cfg.vcs_renormalise,
            saliency_source=model_cfg.saliency_source,
            recognition_source=model_cfg.recognition_source,
            recognition_tokens=model_cfg.recognition_tokens,
            temporal_ln_eps=model_cfg.temporal_ln_eps,
        )

    def encode_video(self, frame_emb: torch.Tensor) -> torch.Tensor:
        """Temporal module (or identity): ``[B, T, D] -> [B, T, D]``."""
        return frame_emb if self.temporal is None else self.temporal(frame_emb)

    @property
    def needs_word_mask(self) -> bool:
        """Whether :meth:`forward` needs the class-name mask (VCS over words, or Word-Emb. recognition)."""
        return self.vcs_tokens == "words" or (self.recognition_source == "words" and self.recognition_tokens == "words")

    def _token_mask(self, text: TextFeatures, word_mask: Optional[torch.Tensor], tokens: str, field: str) -> Optional[torch.Tensor]:
        if tokens == "all":
            return None
        if word_mask is None:
            raise ValueError(f"VideoBranch: {field}='words' needs word_mask [K, L] (from tokenize_prompts)")
        if word_mask.shape != text.tokens.shape[:2]:
            raise ValueError(
                f"VideoBranch: word_mask must be [K, L]={tuple(text.tokens.shape[:2])}, got {tuple(word_mask.shape)}"
            )
        return word_mask.bool()

    def class_vectors(self, text: TextFeatures, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The recognition vector of each class ``[K, D]``: [CLS], or the mean of the normalised words."""
        if self.recognition_source == "cls":
            return text.cls
        words = F.normalize(text.tokens, dim=-1)
        if token_mask is None:
            return words.mean(dim=1)
        weights = token_mask.to(words.dtype)
        return torch.einsum("kld,kl->kd", words, weights / weights.sum(dim=1, keepdim=True))

    def forward(
        self,
        frame_emb: torch.Tensor,
        text: TextFeatures,
        word_mask: Optional[torch.Tensor] = None,
        return_saliency: bool = False,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits of B videos against K classes.

        Args:
            frame_emb: ``[B, T, D]`` image-tower frame embeddings.
            text: class features ``cls[K, D]``, ``tokens[K, L, D]``.
            word_mask: ``[K, L]`` bool class-name positions (needed when :attr:`needs_word_mask`).
            return_saliency: also return the saliency ``[B, K, T]`` (uniform for the mean pool).

        Returns:
            logits ``[B, K]`` (unscaled), and the saliency when asked.
        """
        x = self.encode_video(frame_emb)
        token_mask = self._token_mask(text, word_mask, self.vcs_tokens, "vcs_tokens")
        rec_mask = (self._token_mask(text, word_mask, self.recognition_tokens, "recognition_tokens")
                    if self.recognition_source == "words" else None)
        rec = self.class_vectors(text, rec_mask)
        if self.interaction == "mean":
            logits = mean_pool(x) @ F.normalize(rec, dim=-1).t()
            if not return_saliency:
                return logits
            b, t = x.shape[:2]
            return logits, x.new_full((b, rec.shape[0], t), 1.0 / t)
        if self.saliency_source == "cls":
            queries, query_mask = text.cls.unsqueeze(1), None  # [K, 1, D]
        else:
            queries, query_mask = text.tokens, token_mask
        return video_concept_spotting(
            x, queries, rec, token_mask=query_mask, tau=self.vcs_tau, return_saliency=return_saliency,
            renormalise=self.vcs_renormalise,
        )
