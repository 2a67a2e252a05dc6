"""The BIKE model assembled from a RunConfig: CLIP backbone, video branch, attributes branch, logit scale.

:class:`BikeModel` holds the modules and the class prompts; the engine calls

* ``frame_features(clips[B, T, 3, H, W]) -> [B, T, D]`` (image tower, raw),
* ``class_text(labels=None) -> TextFeatures`` of the category prompts (all K, or the prompts of the
  given labels): with a frozen category encoder computed once and reused until
  :meth:`invalidate_text_cache`; with a finetuned one encoded at every call (with gradient),
* ``video_logits(frame_emb, text, word_mask) -> [B, K]`` (unscaled),
* ``logit_scale()`` (a 0-d tensor).

Parameter groups: names under ``backbone.`` and ``logit_scale.`` are pretrained CLIP layers (lr_clip;
CLIP's logit scale goes with them, as in the official optimiser); everything else is new (lr_new).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import nn

from bike.attributes import AttributesBranch
from bike.backbone import ClipBackbone, TextFeatures, load_clip_from_config
from bike.config import RunConfig
from bike.losses import LogitScale
from bike.video_branch import VideoBranch

log = logging.getLogger(__name__)

PRETRAINED_PREFIXES = ("backbone.", "logit_scale.")


_FROZEN_ENCODERS: dict[tuple[str, Optional[str], str], ClipBackbone] = {}


def attribute_text_encoder(name: str, pretrained: Optional[str], device: str | torch.device = "cpu") -> ClipBackbone:
    """A frozen CLIP for the attributes branch's texts, loaded once per process and device."""
    from bike.backbone import load_clip

    key = (name.replace("/", "-"), pretrained, str(torch.device(device)))
    if key not in _FROZEN_ENCODERS:
        encoder = load_clip(name, pretrained, device).eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        _FROZEN_ENCODERS[key] = encoder
    return _FROZEN_ENCODERS[key]


class BikeModel(nn.Module):
    """CLIP backbone + video branch + (optional) attributes branch + logit scale, with the class prompts.

    Args:
        backbone: the CLIP backbone.
        video_branch: temporal module + VCS/mean interaction.
        attributes: the attributes branch, or None when ``attributes.enabled`` is false.
        logit_scale: the (learnable or fixed) logit scale.
        class_names: the K class names; prompt: the category template.
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        video_branch: VideoBranch,
        attributes: Optional[AttributesBranch],
        logit_scale: LogitScale,
        class_names: Sequence[str],
        prompt: str,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.video_branch = video_branch
        self.attributes = attributes
        self.logit_scale = logit_scale
        self.prompt = prompt
        self.class_names: list[str] = []
        self._text_cache: Optional[TextFeatures] = None
        self.set_classes(class_names)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: RunConfig, class_names: Sequence[str], device: str | torch.device = "cpu") -> "BikeModel":
        """Assemble from ``config.model``, ``config.attributes`` and ``config.loss``."""
        backbone = load_clip_from_config(config.model, device=device)
        width = backbone.embed_dim
        video = VideoBranch.from_config(config.model, width)
        encoder = None
        if config.attributes.enabled and not config.attributes.shares_text_tower(config.model):
            encoder = attribute_text_encoder(config.attributes.text_encoder, config.attributes.text_encoder_pretrained, device)
        attrs = None
        if config.attributes.enabled:
            attrs = AttributesBranch.from_config(config.attributes, (encoder or backbone).embed_dim, prompt=config.model.prompt)
        scale = LogitScale(init=config.logit_scale_init, learnable=config.loss.learn_logit_scale)
        model = cls(backbone, video, attrs, scale, class_names, config.model.prompt)
        model.set_attribute_encoder(encoder)
        return model.to(device)

    def set_attribute_encoder(self, encoder: Optional[ClipBackbone]) -> None:
        """A separate frozen CLIP whose text tower encodes the attributes branch's texts (None: the
        backbone's). Not a submodule: its weights are the pretrained ones and stay out of checkpoints."""
        self.__dict__["_attribute_encoder"] = encoder

    @property
    def attribute_text_encoder(self) -> ClipBackbone:
        """The CLIP whose text tower encodes attribute sentences and class texts."""
        return self.__dict__.get("_attribute_encoder") or self.backbone

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() also move the separate attribute encoder
        out = super()._apply(fn, *args, **kwargs)
        encoder = self.__dict__.get("_attribute_encoder")
        if encoder is not None:
            encoder._apply(fn, *args, **kwargs)
        return out

    def set_classes(self, class_names: Sequence[str]) -> None:
        """(Re)tokenise the class prompts ``[K, L]`` and their word masks."""
        self.class_names = list(class_names)
        tokens, mask = self.backbone.tokenize_prompts(self.class_names, self.prompt)
        self.class_tokens = tokens
        self.class_word_mask = mask
        self._text_cache = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @staticmethod
    def is_pretrained(name: str) -> bool:
        """True for parameters of the pretrained CLIP (both towers and its logit scale)."""
        return name.startswith(PRETRAINED_PREFIXES)

    @property
    def category_encoder_trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.text_parameters())

    # ------------------------------------------------------------------ freezing
    def configure_stage(self, stage: str, finetune_category_encoder: bool, finetune_text_tower: bool = False) -> None:
        """Set ``requires_grad`` for a training stage.

        ``video``: image tower, video branch, logit scale (if learnable) train; the text tower trains
        only with ``finetune_category_encoder``; the attribute heads stay frozen.
        ``attributes``: only the attribute heads (and the logit scale, and the text tower with
        ``finetune_text_tower``) train; the video branch and the image tower are frozen.
        """
        for p in self.parameters():
            p.requires_grad_(False)
        learn_scale = self.logit_scale.learnable
        if stage == "video":
            for p in self.backbone.visual_parameters():
                p.requires_grad_(True)
            for p in self.backbone.text_parameters():
                p.requires_grad_(finetune_category_encoder)
            for p in self.video_branch.parameters():
                p.requires_grad_(True)
        elif stage == "attributes":
            if self.attributes is None or self.attributes.heads is None:
                raise ValueError(
                    "stage 'attributes' trains the attribute heads: set attributes.enabled=true and attributes.train=true"
                )
            for p in self.attributes.heads.parameters():
                p.requires_grad_(True)
            for p in self.backbone.text_parameters():
                p.requires_grad_(finetune_text_tower)
        else:
            raise ValueError(f"configure_stage: stage {stage!r}; expected 'video' or 'attributes'")
        if learn_scale:
            self.logit_scale.log_scale.requires_grad_(True)
        self._text_cache = None

    # ------------------------------------------------------------------ forward pieces
    def frame_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Image tower on every frame: ``[B, T, 3, H, W] -> [B, T, D]`` (raw)."""
        return self.backbone.encode_frames(clips)

    def invalidate_text_cache(self) -> None:
        self._text_cache = None

    def class_text(self, labels: Optional[torch.Tensor] = None) -> TextFeatures:
        """Category text features of all K classes (``labels=None``) or of the prompts ``labels[B]``.

        Frozen encoder: computed once without gradient and indexed; finetuned: encoded now.
        """
        if not self.category_encoder_trainable:
            if self._text_cache is None:
                with torch.no_grad():
                    self._text_cache = self.backbone.encode_text(self.class_tokens.to(self.device)).detach()
            full = self._text_cache
            if labels is None:
                return full
            idx = labels.to(full.cls.device)
            return TextFeatures(full.cls[idx], full.tokens[idx])
        tokens = self.class_tokens.to(self.device)
        if labels is not None:
            tokens = tokens[labels.to(tokens.device)]
        return self.backbone.encode_text(tokens)

    def word_mask(self, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class-name positions ``[K, L]`` (or ``[B, L]`` for ``labels``)."""
        mask = self.class_word_mask.to(self.device)
        return mask if labels is None else mask[labels.to(mask.device)]

    def video_logits(self, frame_emb: torch.Tensor, text: TextFeatures, word_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unscaled video-branch logits ``[B, K]`` of frames ``[B, T, D]`` against ``text`` (K prompts)."""
        return self.video_branch(frame_emb, text, word_mask)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Unscaled logits ``[B, K]`` of clips ``[B, T, 3, H, W]`` against every class."""
        return self.video_logits(self.frame_features(clips), self.class_text(), self.word_mask())

    # ------------------------------------------------------------------ weights
    def load_weights(self, state: dict, source: str, strict_video: bool = True) -> list[str]:
        """Load a model state dict from a checkpoint; keys of modules absent here are ignored.

        Missing attribute-head weights are allowed (a stage-1 checkpoint has none). Returns the
        missing keys.
        """
        own = self.state_dict()
        filtered = {k: v for k, v in state.items() if k in own}
        for k, v in filtered.items():
            if own[k].shape != v.shape:
                raise ValueError(f"{source}: weight {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        result = self.load_state_dict(filtered, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("attributes.")]
        if missing and strict_video:
            raise ValueError(f"{source}: checkpoint lacks {len(missing)} weight(s) of this model, e.g. {missing[:3]}")
        self._text_cache = None
        return list(result.missing_keys)
