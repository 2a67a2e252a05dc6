"""Attribute sentences and their scores, through the frozen text tower.

:func:`attribute_sentence` builds a video's sentence from its top-``k`` phrases;
:class:`SentenceEmbeddingCache` encodes each distinct sentence once (kept on disk across trials and
processes); :class:`AttributeScorer` turns them into ``S_A(k)``; :class:`TextSide` is the text side
of the attributes branch and :class:`EngineTextSideFactory` builds the source run's own.

Shapes: N videos, K classes, D text embedding width, U distinct sentences.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bike.engine.caches import CacheError, ScoreCache

log = logging.getLogger(__name__)

EncodeSentences = Callable[[list[str]], np.ndarray]
#: The category/attribute prompt of the published configs (RunConfig.model.prompt).
DEFAULT_PROMPT = "This is a video about {}"


# ======================================================================== attribute sentences/scores
def attribute_sentence(
    phrases: Sequence[str], k: int, prompt: str = DEFAULT_PROMPT, separator: str = ",", use_prompt: bool = True
) -> str:
    """The attribute sentence: ``prompt`` filled with the top-``k`` phrases joined by ``separator``.

    The contract of ``bike.attributes.attribute_sentence`` (official code: a bare comma,
    ``"This is a video about a,b,c"``), without importing torch; a test checks the two agree.
    """
    if k < 1:
        raise ValueError(f"attribute_sentence: k={k}; expected >= 1")
    joined = separator.join(list(phrases)[:k])
    return prompt.format(joined) if use_prompt else joined


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sentences-", suffix=".npz")
        os.close(fd)
        keys = list(merged)
        np.savez(tmp, sentences=np.array(keys, dtype=str), emb=np.stack([merged[s] for s in keys]), encoder_id=np.array(self.encoder_id))
        os.replace(tmp, self.path)
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
    separator: str = ","
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
    """The default text side: the source run's own attributes branch, built as evaluation builds it.

    ``bike.engine.runner.build_model`` + the run's weights (its ``checkpoints/best.pt``, else
    ``latest.pt``, else ``init_from``, else the pretrained CLIP as it is, seeded like evaluation), then
    ``AttributesBranch.encode`` on the sentences and on the class texts; a trained run's sentence and
    class heads are applied to each side (the score is their cosine). Only the text tower runs: no
    video is decoded and the video branch never runs. Picklable, for worker processes.
    """

    device: str = "cpu"

    def __call__(self, cache: ScoreCache) -> TextSide:
        import torch

        from bike.engine import runner
        from bike.engine.checkpoint import load_checkpoint, resolve_init_checkpoint
        from bike.engine.train_loop import reseed

        cfg = cache.config
        if not cfg.attributes.enabled:
            raise CacheError(f"{cache.run_dir / 'config.yaml'}: attributes.enabled is false; there is no attributes branch to re-score with")
        device = torch.device(self.device)
        reseed(cfg.seed)  # as evaluation does before building (matters for random initialisation only)
        model = runner.build_model(cfg, list(cache.classes), device)
        weights = None
        if (cache.run_dir / "checkpoints").is_dir():
            try:
                weights = resolve_init_checkpoint(cache.run_dir)
            except FileNotFoundError:
                weights = None
        if weights is None and cfg.init_from:
            weights = resolve_init_checkpoint(cfg.init_from)
        if weights is not None:
            model.load_weights(load_checkpoint(weights, map_location=device)["model"], str(weights))
        model.eval()
        branch, backbone = model.attributes, model.backbone

        def encode(sentences: list[str]) -> np.ndarray:
            with torch.no_grad():
                emb = branch.encode(backbone, sentences)
                if branch.heads is not None:
                    emb = branch.heads.sentence_head(emb)
                return emb.float().cpu().numpy()

        with torch.no_grad():
            class_emb = branch.encode(backbone, branch.class_texts(cache.classes))
            if branch.heads is not None:
                class_emb = branch.heads.class_head(class_emb)
        encoder_id = f"{cfg.content_hash()}|{weights or 'no-weights'}"
        return TextSide(
            encode,
            class_emb.float().cpu().numpy(),
            encoder_id=encoder_id,
            prompt=branch.prompt,
            separator=branch.separator,
            use_prompt=branch.prompt_attributes,
        )


TextSideFactory = Callable[[ScoreCache], TextSide]
