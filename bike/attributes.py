"""The attributes branch (Video-to-Text): lexicon attributes of each video, and their class scores.

Generation (never released by the authors; implemented as the paper describes): the video embedding is
the L2-normalised mean of a frozen CLIP's frame embeddings; every phrase of a lexicon is encoded by the
text tower; phrases are ranked by cosine similarity and the top ``max_k`` are kept in rank order (so any
smaller k is a slice). The attribute sentence is the prompt followed by the top-k phrases joined by a
bare comma, e.g. ``"This is a video about juggling soccer ball,running on the grass,shooting goal"``.

Recognition: cosine between the sentence embedding and the class embeddings — the plain text tower
("plug and play"), or, when trained (stage 2), after two small heads (Linear–ReLU–Linear, D→D) on the
sentence and on the class embeddings. Class prompt and attribute prompt switch independently
(Table 6c).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from bike.backbone import DEFAULT_TEMPLATE, ClipBackbone
from bike.config import DEFAULT_NUM_ATTRIBUTES
from bike.text import BUILTIN_LEXICONS, DEFAULT_SEPARATOR, LEXICON_DIR, attribute_sentence, lexicon_path  # noqa: F401

#: Phrases encoded per text-tower call.
DEFAULT_BATCH_SIZE = 256
#: Standard deviation of the heads' normal initialisation.
HEAD_INIT_STD = 0.02


# ------------------------------------------------------------------------------------ lexicons
def load_lexicon(name_or_path: Union[str, Path]) -> list[str]:
    """Phrases of a lexicon: a built-in name (``k400``, ``imagenet1k``) or a text file path.

    The file holds one phrase per line; blank lines and lines starting with ``#`` are ignored.
    """
    key = str(name_or_path)
    path = lexicon_path(key)
    if not path.is_file():
        raise FileNotFoundError(
            f"lexicon {key!r}: file {path} not found (built-in lexicons: {', '.join(BUILTIN_LEXICONS)}; "
            f"otherwise give a text file with one phrase per line)"
        )
    phrases = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    phrases = [p for p in phrases if p and not p.startswith("#")]
    if not phrases:
        raise ValueError(f"lexicon {key!r}: file {path} holds no phrase (expected one phrase per line)")
    return phrases


# ------------------------------------------------------------------------------------ encoding
def _encode_texts(backbone: ClipBackbone, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Raw [CLS] embeddings ``[P, D]`` of ``texts`` (gradients follow the text tower's settings)."""
    device = next(backbone.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = backbone.tokenize(texts[start : start + batch_size]).to(device)
        out.append(backbone.encode_text(tokens).cls)
    return torch.cat(out, dim=0)


def encode_phrases(
    backbone: ClipBackbone,
    phrases: Sequence[str],
    template: Optional[str] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """L2-normalised text embeddings of phrases, ``[P, D]`` (no gradient).

    Args:
        template: e.g. ``"a video of {}"``; ``None`` encodes each phrase as it is.
    """
    texts = [template.format(p) for p in phrases] if template else list(phrases)
    with torch.no_grad():
        return F.normalize(_encode_texts(backbone, texts, batch_size).float(), dim=-1)


def rank_lexicon(video_emb: torch.Tensor, lexicon_emb: torch.Tensor, max_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``max_k`` lexicon phrases of each video by cosine similarity.

    Args:
        video_emb: ``[N, D]`` video embeddings. lexicon_emb: ``[P, D]`` phrase embeddings.
        max_k: phrases kept per video (at most P).

    Returns:
        ``(indices[N, k], sims[N, k])`` with ``k = min(max_k, P)``, best first.
    """
    if video_emb.ndim != 2 or lexicon_emb.ndim != 2 or video_emb.shape[1] != lexicon_emb.shape[1]:
        raise ValueError(
            f"rank_lexicon: expected video_emb [N, D] and lexicon_emb [P, D], got {tuple(video_emb.shape)} "
            f"and {tuple(lexicon_emb.shape)}"
        )
    if max_k < 1:
        raise ValueError(f"rank_lexicon: max_k={max_k}; expected >= 1")
    sims = F.normalize(video_emb.float(), dim=-1) @ F.normalize(lexicon_emb.float(), dim=-1).t()
    top = torch.topk(sims, k=min(max_k, lexicon_emb.shape[0]), dim=1)
    return top.indices, top.values


def video_embedding(frame_emb: torch.Tensor) -> torch.Tensor:
    """Video-level embedding for generation: mean over frames, L2-normalised, ``[N, T, D] -> [N, D]``."""
    return F.normalize(frame_emb.float().mean(dim=1), dim=-1)


def _video_embeddings(backbone: ClipBackbone, videos: Any) -> torch.Tensor:
    """``[N, D]`` video embeddings from frame embeddings ``[N, T, D]``, clips ``[N, T, 3, H, W]``, or an
    iterable of clip batches (tensors, or tuples whose first item is the clip batch)."""
    if isinstance(videos, torch.Tensor):
        if videos.ndim == 3:
            return video_embedding(videos)
        if videos.ndim == 2:
            return F.normalize(videos.float(), dim=-1)
        videos = [videos]
    device = next(backbone.parameters()).device
    out = []
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            for batch in videos:
                clips = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(clips, torch.Tensor) or clips.ndim != 5:
                    raise ValueError(
                        "generate_attributes: expected clip batches [B, T, 3, H, W] (or frame embeddings "
                        f"[N, T, D]); got {type(clips).__name__} {tuple(getattr(clips, 'shape', ()))}"
                    )
                out.append(video_embedding(backbone.encode_frames(clips.to(device))))
    finally:
        backbone.train(was_training)
    if not out:
        raise ValueError("generate_attributes: no video given")
    return torch.cat(out, dim=0)


def generate_attributes(
    backbone: ClipBackbone,
    videos: Union[torch.Tensor, Iterable[Any]],
    lexicon: Union[str, Path, Sequence[str]],
    max_k: int,
    template: Optional[str] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    return_scores: bool = False,
) -> Union[list[list[str]], tuple[list[list[str]], torch.Tensor]]:
    """Ranked lexicon phrases of every video (Video-to-Text generation with a frozen CLIP).

    Args:
        backbone: the frozen generator CLIP.
        videos: frame embeddings ``[N, T, D]``, video embeddings ``[N, D]``, clips
            ``[N, T, 3, H, W]``, or an iterable of clip batches (e.g. a data loader).
        lexicon: a lexicon name or path (see :func:`load_lexicon`) or the phrases themselves.
        max_k: phrases kept per video, best first (a smaller k is a slice).
        template: prompt for encoding phrases (``None``: the bare phrase).

    Returns:
        ``N`` lists of ``min(max_k, P)`` phrases; with ``return_scores`` also their cosines ``[N, k]``.
    """
    phrases = load_lexicon(lexicon) if isinstance(lexicon, (str, Path)) else list(lexicon)
    lex = encode_phrases(backbone, phrases, template=template, batch_size=batch_size)
    vid = _video_embeddings(backbone, videos).to(lex.device)
    idx, sims = rank_lexicon(vid, lex, max_k)
    ranked = [[phrases[i] for i in row] for row in idx.tolist()]
    return (ranked, sims) if return_scores else ranked


# ------------------------------------------------------------------------------------ recognition
def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, width))


class AttributeHeads(nn.Module):
    """Two Linear–ReLU–Linear (D→D) heads: one on attribute sentence embeddings, one on class embeddings."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.sentence_head = _mlp(width)
        self.class_head = _mlp(width)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=HEAD_INIT_STD)
                nn.init.zeros_(m.bias)

    def forward(self, sentence_emb: torch.Tensor, class_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, D], [K, D] -> [N, D], [K, D]``."""
        return self.sentence_head(sentence_emb), self.class_head(class_emb)


class AttributesBranch(nn.Module):
    """Attribute sentence vs class embeddings -> scores ``[N, K]`` (cosine).

    Args:
        width: D.
        trained: use (trainable) :class:`AttributeHeads`; ``False`` = the plain text tower.
        prompt: the prompt of both the attribute sentence and the class text.
        separator: joins the attributes.
        prompt_attributes: put the prompt before the attributes.
        prompt_categories: encode classes as ``prompt.format(name)`` (else the bare name).
        num_attributes: k, the attributes in a sentence.
    """

    def __init__(
        self,
        width: int,
        trained: bool = False,
        prompt: str = DEFAULT_TEMPLATE,
        separator: str = DEFAULT_SEPARATOR,
        prompt_attributes: bool = True,
        prompt_categories: bool = True,
        num_attributes: int = DEFAULT_NUM_ATTRIBUTES,
    ) -> None:
        super().__init__()
        self.prompt = prompt
        self.separator = separator
        self.prompt_attributes = prompt_attributes
        self.prompt_categories = prompt_categories
        self.num_attributes = num_attributes
        self.heads: Optional[AttributeHeads] = AttributeHeads(width) if trained else None

    @classmethod
    def from_config(cls, attr_cfg: Any, width: int, prompt: str = DEFAULT_TEMPLATE) -> "AttributesBranch":
        """From :class:`bike.config.AttributesConfig` (heads when ``train``) and the category prompt."""
        return cls(
            width,
            trained=attr_cfg.train,
            prompt=prompt,
            separator=attr_cfg.separator,
            prompt_attributes=attr_cfg.prompt_attributes,
            prompt_categories=attr_cfg.prompt_categories,
            num_attributes=attr_cfg.num_attributes,
        )

    def sentences(self, ranked: Sequence[Sequence[str]]) -> list[str]:
        """Attribute sentences of videos from their ranked phrases."""
        return [
            attribute_sentence(p, self.num_attributes, self.prompt, self.separator, self.prompt_attributes)
            for p in ranked
        ]

    def class_texts(self, class_names: Sequence[str]) -> list[str]:
        """The class texts: prompted or bare names."""
        return [self.prompt.format(n) if self.prompt_categories else n for n in class_names]

    def encode(self, backbone: ClipBackbone, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """Raw text embeddings ``[P, D]`` (gradient only if the text tower is trainable)."""
        if any(p.requires_grad for p in backbone.text_parameters()):
            return _encode_texts(backbone, texts, batch_size)
        with torch.no_grad():
            return _encode_texts(backbone, texts, batch_size)

    def forward(self, sentence_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
        """Cosine scores ``[N, K]`` of sentence embeddings ``[N, D]`` and class embeddings ``[K, D]``.

        With trained heads, both sides are L2-normalised before the heads, as in the released code
        (which normalises the text embeddings and then applies ``sentence_fc`` / ``query_fc``), and the
        heads' outputs are normalised again for the cosine.
        """
        if self.heads is not None:
            sentence_emb, class_emb = self.heads(F.normalize(sentence_emb, dim=-1), F.normalize(class_emb, dim=-1))
        return F.normalize(sentence_emb, dim=-1) @ F.normalize(class_emb, dim=-1).t()

    def score(
        self, backbone: ClipBackbone, ranked: Sequence[Sequence[str]], class_names: Sequence[str]
    ) -> torch.Tensor:
        """Scores ``[N, K]`` of N videos (their ranked phrases) against K class names."""
        sent = self.encode(backbone, self.sentences(ranked))
        cls = self.encode(backbone, self.class_texts(class_names))
        return self(sent, cls)
