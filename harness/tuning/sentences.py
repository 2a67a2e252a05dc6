"""Attribute sentences and their scores, through the frozen text tower.

:func:`attribute_sentence` (``bike.text``) builds a video's sentence from its top-``k`` phrases;
:class:`SentenceEmbeddingCache` encodes each distinct sentence once (kept on disk across trials and
processes); :class:`AttributeScorer` turns them into ``S_A(k)``; :class:`TextSide` is the text side
of the attributes branch and :class:`EngineTextSideFactory` builds the source run's own.

Shapes: N videos, K classes, D text embedding width, U distinct sentences.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bike.config import DEFAULT_PROMPT
from bike.engine.caches import CacheError, ScoreCache
from bike.rundir import CONFIG_FILE, atomic_write_npz
from bike.text import DEFAULT_SEPARATOR, attribute_sentence

log = logging.getLogger(__name__)

EncodeSentences = Callable[[list[str]], np.ndarray]


# ======================================================================== attribute sentences/scores
def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.finfo(np.float32).tiny)


class SentenceEmbeddingCache:
    """Encode each distinct sentence once, across trials (and processes, through an ``.npz`` file).

    Args:
        encode: ``encode_sentences(list[str]) -> [n, D]`` (the frozen text tower).
        path: ``.npz`` file holding ``sentences [U]``, ``emb [U, D]`` and ``encoder_id``; entries of
            another encoder are ignored. None keeps the cache in memory only.
        encoder_id: identity of the text tower (a different id never reuses embeddings).
        batch_size: sentences per ``encode`` call.
    """

    def __init__(self, encode: EncodeSentences, path: str | Path | None = None, encoder_id: str = "", batch_size: int = 256):
        self.encode = encode
        self.path = Path(path) if path is not None else None
        self.encoder_id = encoder_id
        self.batch_size = batch_size
        self.n_encoded = 0  # sentences this instance sent through the encoder
        self._emb: dict[str, np.ndarray] = {}
        self._dirty = False
        if self.path is not None:
            self._emb.update(self._read())

    def _read(self) -> dict[str, np.ndarray]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["encoder_id"]) != self.encoder_id:
                    return {}
                return dict(zip(z["sentences"].tolist(), z["emb"]))
        except (OSError, KeyError, ValueError) as exc:  # a torn or foreign file only costs re-encoding
            log.warning("ignoring unreadable sentence cache %s: %s", self.path, exc)
            return {}

    def __len__(self) -> int:
        return len(self._emb)

    def embed(self, sentences: Sequence[str]) -> np.ndarray:
        """``[len(sentences), D]`` embeddings, encoding only the sentences not seen before."""
        todo = [s for s in dict.fromkeys(sentences) if s not in self._emb]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            emb = np.asarray(self.encode(batch), dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(batch):
                raise ValueError(f"encode_sentences returned shape {emb.shape} for {len(batch)} sentences; expected [n, D]")
            self._emb.update(zip(batch, emb))
            self.n_encoded += len(batch)
            self._dirty = True
        if not sentences:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._emb[s] for s in sentences])

    def save(self) -> None:
        """Merge with the file's current content and replace it atomically (no-op when unchanged)."""
        if self.path is None or not self._dirty:
            return
        merged = self._read()
        merged.update(self._emb)
        keys = list(merged)
        atomic_write_npz(self.path, sentences=np.array(keys, dtype=str), emb=np.stack([merged[s] for s in keys]),
                         encoder_id=np.array(self.encoder_id))
        self._dirty = False


@dataclass
class TextSide:
    """The frozen text side of the attributes branch.

    Attributes:
        encode_sentences: ``list[str] -> [n, D]`` sentence embeddings (after the trained sentence
            head, when the run has one).
        class_emb: ``[K, D]`` class embeddings of the attribute branch (after the class head).
        encoder_id: identity of the encoder and its weights (keys the on-disk sentence cache).
        prompt, separator, use_prompt: how a video's phrases become its sentence.
    """

    encode_sentences: EncodeSentences
    class_emb: np.ndarray
    encoder_id: str
    prompt: str = DEFAULT_PROMPT
    separator: str = DEFAULT_SEPARATOR
    use_prompt: bool = True

    def sentence(self, phrases: Sequence[str], k: int) -> str:
        return attribute_sentence(phrases, k, self.prompt, self.separator, self.use_prompt)


class AttributeScorer:
    """``S_A(k) = cos(sentence_k(video), class)``: ``[N, K]`` for each k, computed once per k."""

    def __init__(self, phrases: Sequence[Sequence[str]], text: TextSide, cache: SentenceEmbeddingCache):
        self.phrases = [list(p) for p in phrases]
        self.text = text
        self.cache = cache
        self.class_emb = _l2_normalise(text.class_emb)  # [K, D]
        self._scores: dict[int, np.ndarray] = {}

    def sentences(self, k: int) -> list[str]:
        """The ``[N]`` attribute sentences with the top-``k`` phrases."""
        return [self.text.sentence(p, k) for p in self.phrases]

    def scores(self, k: int) -> np.ndarray:
        """``[N, K]`` float32 cosine scores for ``k`` attributes."""
        if k not in self._scores:
            position: dict[str, int] = {}
            inverse = np.array([position.setdefault(s, len(position)) for s in self.sentences(k)], dtype=np.int64)
            emb = _l2_normalise(self.cache.embed(list(position)))  # [U, D]
            if emb.shape[1] != self.class_emb.shape[1]:
                raise ValueError(f"sentence embeddings are {emb.shape[1]}-wide; class embeddings {self.class_emb.shape[1]}-wide")
            self._scores[k] = (emb @ self.class_emb.T)[inverse]
            self.cache.save()
        return self._scores[k]


# ========================================================================== the engine's text side
@dataclass(frozen=True)
class EngineTextSideFactory:
    """The default text side: the source run's own attributes branch, as ``bike.evaluate.load_run_model``
    loads it.

    The run's model for the cache's classes (its ``checkpoints/best.pt``, else ``latest.pt``, else
    ``init_from``, else the pretrained CLIP as it is, seeded like evaluation), then
    ``AttributesBranch.encode`` on the sentences and on the class texts; a trained run's sentence and
    class heads are applied to each L2-normalised side, as ``AttributesBranch.forward`` does (the
    score is their cosine). Only the text tower runs: no
    video is decoded and the video branch never runs. Picklable, for worker processes.
    """

    device: str = "cpu"

    def __call__(self, cache: ScoreCache) -> TextSide:
        import torch
        import torch.nn.functional as F

        from bike.evaluate import load_run_model

        cfg = cache.config
        if not cfg.attributes.enabled:
            raise CacheError(f"{cache.run_dir / CONFIG_FILE}: attributes.enabled is false; there is no attributes branch to re-score with")
        model, _, weights = load_run_model(cache.run_dir, self.device, class_names=list(cache.classes), config=cfg)
        branch, backbone = model.attributes, model.attribute_text_encoder

        def encode(sentences: list[str]) -> np.ndarray:
            with torch.no_grad():
                emb = branch.encode(backbone, sentences)
                if branch.heads is not None:
                    emb = branch.heads.sentence_head(F.normalize(emb, dim=-1))
                return emb.float().cpu().numpy()

        with torch.no_grad():
            class_emb = branch.encode(backbone, branch.class_texts(cache.classes))
            if branch.heads is not None:
                class_emb = branch.heads.class_head(F.normalize(class_emb, dim=-1))
        # "normalised-heads": sentence caches written before the heads saw normalised input are not reused
        encoder_id = f"{cfg.content_hash()}|{weights or 'no-weights'}" + ("|normalised-heads" if branch.heads is not None else "")
        return TextSide(
            encode,
            class_emb.float().cpu().numpy(),
            encoder_id=encoder_id,
            prompt=branch.prompt,
            separator=branch.separator,
            use_prompt=branch.prompt_attributes,
        )


TextSideFactory = Callable[[ScoreCache], TextSide]
