"""Optuna studies of the fusion weight λ and the number of attributes k, on cached scores.

A study never decodes a video and never runs the video branch: it reads one evaluation run's caches
(``<run>/cache/``, see docs/ARCHITECTURE.md "Run directory") and

* for each ``k`` a trial picks, rebuilds every video's attribute sentence from its cached ranked
  phrases, encodes the *distinct* sentences once through the frozen text tower (an injected
  ``encode_sentences(list[str]) -> [n, D]`` callable behind a per-sentence embedding cache kept on
  disk), and scores ``S_A = cos(sentence, class)`` against the cached class embeddings;
* solves λ exactly on ``S_V`` and ``S_A`` (:mod:`harness.lambda_exact`; the default ``lam: exact``) or
  samples it and scores the fused top-1 through :class:`harness.lambda_exact.CandidateFusion`.

Tuning uses a held-out part of the training list by default (``tune_on: holdout``: the source run
must have evaluated the ``tune`` split); tuning on the reported split must be asked for
(``tune_on: reported``) and is tagged as such everywhere it is recorded.

Several workers share one study through its storage. ``workers > 1`` go out through submitit as ONE
job array (:func:`run_worker_array`; ``executor: local | slurm | debug`` and ``resources`` in the sweep,
overridden on the command line), each task a :class:`StudyWorker`; the parent waits for the array and
fails naming each failed task and its log. One worker runs in the parent process unless the executor
is ``slurm``. With SLURM and the default storage the study goes to a journal file in its directory.

A finished study's ``best.json`` can feed other tables: :func:`load_study_lambda` reads and checks it,
:func:`fused_metric` recomputes a fused metric of any run's cached split at that λ
(``bikebench table6 --lambda-from STUDY``, :mod:`harness.table6`).

Trials are logged to MLflow after the optimisation (a parent run per study, a child run per trial),
so that logging costs stay outside the trial loop. ``mlflow`` and ``matplotlib`` are imported only
inside the functions that need them.

Shapes: N videos, K classes, D text embedding width, U distinct sentences.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import typing
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import numpy as np
import submitit
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bike.config import ConfigError, RunConfig
from harness.lambda_exact import CandidateFusion, LambdaCurve, exact_lambda_curve, transform_scores
from harness.spec import ResourceSpec

log = logging.getLogger(__name__)

EncodeSentences = Callable[[list[str]], np.ndarray]
ObjectiveName = Literal["fused_top1", "fused_mean_class"]
TransformName = Literal["softmax", "cosine"]
ExecutorName = Literal["local", "slurm", "debug"]
#: Wall-clock limit of one study worker task when the sweep's ``resources.timeout_min`` is unset.
DEFAULT_WORKER_TIMEOUT_MIN = 60.0
#: Seconds between polls of the worker array's jobs.
DEFAULT_WORKER_POLL_S = 1.0
#: File names of the default storages under the study directory.
SQLITE_FILE = "optuna.db"
JOURNAL_FILE = "journal.log"
#: objective -> metric of :func:`harness.lambda_exact.exact_lambda_curve`.
OBJECTIVE_METRIC = {"fused_top1": "top1", "fused_mean_class": "mean_class"}
#: Cache layout (bike.engine.caches): <run_dir>/cache/<split>/{manifest.json, *.npy, video_ids.json}.
CACHE_DIR = "cache"
MANIFEST = "manifest.json"
ATTRIBUTES_FILE = "attributes.json"
#: The category/attribute prompt of the published configs (RunConfig.model.prompt).
DEFAULT_PROMPT = "This is a video about {}"
#: Largest |recomputed − cached| attribute score tolerated silently at the source run's own k.
ATTR_CONSISTENCY_TOL = 1e-3


# =============================================================================== score-cache reader
class CacheError(ValueError):
    """A run directory whose caches are missing or inconsistent; the message names the file."""


@dataclass
class ScoreCache:
    """One split's cached evaluation scores of one run, rows aligned by ``video_ids``.

    Attributes:
        run_dir: the run directory; directory: ``<run_dir>/cache/<split>``.
        split: the evaluated split (``manifest.json``'s ``split``).
        video_scores: ``[N, K]`` video-branch scores (``score_kind``: unscaled ``logits``, or
            ``probabilities`` averaged over views — already softmaxed).
        attr_scores: ``[N, K]`` attribute-branch cosine scores (None when not cached).
        labels: ``[N]`` class indices (negative = unlabelled) or ``[N, K]`` multi-hot.
        video_ids: ``[N]`` ids, unique.
        classes: ``[K]`` class names.
        attributes: per row the ranked attribute phrases (None when ``cache/attributes.json`` is absent).
        manifest: the split's ``manifest.json``.
        config: the run's resolved :class:`RunConfig` (defaults when ``config.yaml`` is absent).
        class_emb: ``[K, D]`` category [CLS] embeddings (optional).
    """

    run_dir: Path
    directory: Path
    split: str
    video_scores: np.ndarray
    attr_scores: Optional[np.ndarray]
    labels: np.ndarray
    video_ids: list[str]
    classes: list[str]
    score_kind: str = "logits"
    attributes: Optional[list[list[str]]] = None
    manifest: dict = field(default_factory=dict)
    config: RunConfig = field(default_factory=RunConfig)
    class_emb: Optional[np.ndarray] = None

    @property
    def max_attributes(self) -> int:
        """Largest k the cached rankings allow (the longest phrase list)."""
        if not self.attributes:
            return 0
        return max(len(p) for p in self.attributes)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: not valid JSON: {exc}") from None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CacheError(f"{path}: file not found") from None
    except ValueError as exc:
        raise CacheError(f"{path}: not a readable .npy array: {exc}") from None


def cached_splits(run_dir: str | Path) -> list[str]:
    """The splits with a complete cache (a ``manifest.json``) under ``<run_dir>/cache/``."""
    root = Path(run_dir) / CACHE_DIR
    return sorted(d.name for d in root.iterdir() if (d / MANIFEST).is_file()) if root.is_dir() else []


def read_attributes_file(path: Path) -> dict[str, list[str]]:
    """``cache/attributes.json``: ``{"signature": ..., "videos": {id: [phrase, ...]}}`` (or the bare mapping)."""
    raw = _load_json(path)
    videos = raw.get("videos", raw) if isinstance(raw, dict) else None
    if not isinstance(videos, dict):
        raise CacheError(f"{path}: expected {{'videos': {{video_id: [phrase, ...]}}}}")
    out: dict[str, list[str]] = {}
    for vid, phrases in videos.items():
        if not isinstance(phrases, list) or not all(isinstance(x, str) for x in phrases):
            raise CacheError(f"{path}: videos[{vid!r}]: expected a list of phrases (strings)")
        out[str(vid)] = phrases
    return out


def load_score_cache(run_dir: str | Path, split: Optional[str] = None) -> ScoreCache:
    """Read one split's cache of a run (the layout ``bike.engine.caches`` writes).

    ``<run_dir>/cache/<split>/``: ``manifest.json`` (written last: a cache without it is
    incomplete; ``split``, ``classes``, ``score_kind``, ``arrays``), ``video_scores.npy [N, K]``,
    ``labels.npy [N]`` (or ``[N, K]``), ``video_ids.json``, optional ``attr_scores.npy [N, K]`` and
    ``class_emb.npy [K, D]``; ``<run_dir>/cache/attributes.json`` holds the ranked phrases of every
    video of the run, keyed by video id. ``split=None`` takes the only split cached.
    """
    run_dir = Path(run_dir)
    available = cached_splits(run_dir)
    if split is None:
        if len(available) != 1:
            raise CacheError(
                f"{run_dir / CACHE_DIR}: {'no split cached' if not available else f'several splits cached {available}'}; "
                "name the split"
            )
        split = available[0]
    directory = run_dir / CACHE_DIR / split
    if split not in available:
        raise CacheError(
            f"{directory / MANIFEST}: no cache for split {split!r} (cached: {available or 'none'}); "
            f"evaluate that split first (eval.split={split}, or a training run with data.tuning_holdout > 0 for 'tune')"
        )
    manifest = _load_json(directory / MANIFEST)
    files = {name: info.get("file", f"{name}.npy") for name, info in manifest.get("arrays", {}).items()}
    video_scores = _load_npy(directory / files.get("video_scores", "video_scores.npy"))
    labels = _load_npy(directory / files.get("labels", "labels.npy"))
    ids = _load_json(directory / "video_ids.json")
    if not isinstance(ids, list):
        raise CacheError(f"{directory / 'video_ids.json'}: expected a list of video ids")
    ids = [str(v) for v in ids]
    n = len(ids)
    if video_scores.ndim != 2 or video_scores.shape[0] != n:
        raise CacheError(f"{directory / 'video_scores.npy'}: shape {video_scores.shape}; expected [{n}, K] (one row per id)")
    if labels.shape[0] != n:
        raise CacheError(f"{directory / 'labels.npy'}: {labels.shape[0]} labels for {n} video ids")
    if len(set(ids)) != n:
        raise CacheError(f"{directory / 'video_ids.json'}: video ids are not unique")
    classes = [str(c) for c in manifest.get("classes", [])]
    if len(classes) != video_scores.shape[1]:
        raise CacheError(f"{directory / MANIFEST}: {len(classes)} classes listed for {video_scores.shape[1]} score columns")
    attr_scores = None
    if "attr_scores" in files:
        attr_scores = _load_npy(directory / files["attr_scores"])
        if attr_scores.shape != video_scores.shape:
            raise CacheError(f"{directory / files['attr_scores']}: shape {attr_scores.shape}; expected {video_scores.shape}")
    class_emb = _load_npy(directory / files["class_emb"]) if "class_emb" in files else None
    attributes = None
    attr_path = run_dir / CACHE_DIR / ATTRIBUTES_FILE
    if attr_path.is_file():
        known = read_attributes_file(attr_path)
        missing = [v for v in ids if v not in known]
        if missing:
            raise CacheError(f"{attr_path}: {len(missing)} of {n} video ids of split {split!r} have no attributes (first: {missing[:3]})")
        attributes = [known[v] for v in ids]
    config = RunConfig.from_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else RunConfig()
    return ScoreCache(
        run_dir=run_dir,
        directory=directory,
        split=str(manifest.get("split", split)),
        video_scores=video_scores,
        attr_scores=attr_scores,
        labels=labels,
        video_ids=ids,
        classes=classes,
        score_kind=str(manifest.get("score_kind", "logits")),
        attributes=attributes,
        manifest=manifest,
        config=config,
        class_emb=class_emb,
    )


def join_score_caches(video: ScoreCache, attrs: ScoreCache) -> ScoreCache:
    """Video scores from one run, attribute scores and phrases from another, joined by video id.

    Rows follow ``video``'s order; every id of ``video`` must be in ``attrs`` with the same label,
    and the class lists must agree. Never joins by row order.
    """
    if list(attrs.classes) != list(video.classes):
        raise CacheError(f"{attrs.directory / MANIFEST}: class list differs from {video.directory / MANIFEST}")
    pos = {v: i for i, v in enumerate(attrs.video_ids)}
    missing = [v for v in video.video_ids if v not in pos]
    if missing:
        raise CacheError(
            f"{attrs.directory / 'video_ids.json'}: {len(missing)} video ids of {video.directory} are absent (first: {missing[:3]})"
        )
    idx = np.array([pos[v] for v in video.video_ids], dtype=np.int64)
    differ = np.any((attrs.labels[idx] != video.labels).reshape(len(idx), -1), axis=1)
    if differ.any():
        bad = video.video_ids[int(np.flatnonzero(differ)[0])]
        raise CacheError(f"{attrs.directory / 'labels.npy'}: label of video {bad!r} differs from {video.directory}")
    return replace(
        video,
        attr_scores=None if attrs.attr_scores is None else np.asarray(attrs.attr_scores)[idx],
        attributes=None if attrs.attributes is None else [attrs.attributes[i] for i in idx],
        config=attrs.config,
    )


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


# ============================================================================= the tuning problem
class FusionProblem:
    """Everything a trial needs, with per-(k, transform) results cached across trials.

    Unlabelled rows (negative label) are dropped, as evaluation skips them.

    Args:
        cache: the source run's caches (video scores ``[N, K]``, labels ``[N]``).
        metric: ``"top1"`` or ``"mean_class"``.
        default_transform: the source run's ``fusion.transform``.
        scorer: recomputes attribute scores for a k; None uses the cached ``attr_scores`` (k fixed).
    """

    def __init__(
        self,
        cache: ScoreCache,
        metric: str = "top1",
        default_transform: str = "softmax",
        scorer: Optional[AttributeScorer] = None,
    ):
        if cache.labels.ndim != 1:
            raise CacheError(f"{cache.directory / 'labels.npy'}: multi-label targets {cache.labels.shape}; tuning needs [N] class indices")
        if scorer is None and cache.attr_scores is None:
            raise CacheError(f"{cache.directory / 'attr_scores.npy'}: missing, and no attribute phrases to recompute it from")
        self.cache = cache
        self.metric = metric
        self.default_transform = default_transform
        self.scorer = scorer
        self.keep = np.flatnonzero(np.asarray(cache.labels) >= 0)
        self.labels = np.asarray(cache.labels, dtype=np.int64)[self.keep]
        self._video: dict[str, np.ndarray] = {}
        self._curves: dict[tuple, LambdaCurve] = {}
        self._fast: dict[tuple, CandidateFusion] = {}
        self.diagnostics: dict[str, Any] = {"n_videos": int(self.keep.size), "n_unlabelled": int(len(cache.labels) - self.keep.size)}

    def _transform(self, transform: Optional[str]) -> str:
        return transform or self.default_transform

    def video_side(self, transform: Optional[str] = None) -> np.ndarray:
        """``T(S_V)`` ``[N, K]`` float64 (view-averaged probabilities are already the softmax side)."""
        t = self._transform(transform)
        if t not in self._video:
            s_v = np.asarray(self.cache.video_scores)[self.keep]
            if self.cache.score_kind == "probabilities":
                if t != "softmax":
                    raise CacheError(
                        f"{self.cache.directory / MANIFEST}: video scores are view-averaged probabilities; "
                        f"transform {t!r} needs logits (evaluate with eval.view_aggregation=logit_mean)"
                    )
                self._video[t] = transform_scores(s_v, None)
            else:
                self._video[t] = transform_scores(s_v, t)  # type: ignore[arg-type]
        return self._video[t]

    def attr_scores(self, k: Optional[int]) -> np.ndarray:
        """``[N, K]`` raw attribute scores for ``k`` attributes (cached scores when ``k`` is None)."""
        if k is None:
            return np.asarray(self.cache.attr_scores)[self.keep]
        if self.scorer is None:
            raise ValueError("k was given but the problem has no attribute phrases/encoder to re-score with")
        return self.scorer.scores(k)[self.keep]

    def attr_side(self, k: Optional[int], transform: Optional[str] = None) -> np.ndarray:
        """``T(S_A(k))`` ``[N, K]`` float64."""
        return transform_scores(self.attr_scores(k), self._transform(transform))  # type: ignore[arg-type]

    def curve(self, k: Optional[int], transform: Optional[str] = None) -> LambdaCurve:
        """Exact metric-vs-λ for this k (cached)."""
        key = (k, self._transform(transform))
        if key not in self._curves:
            curve = exact_lambda_curve(self.video_side(key[1]), self.attr_side(k, key[1]), self.labels, transform=None, metric=self.metric)  # type: ignore[arg-type]
            self._curves[key] = replace(curve, transform=key[1])
        return self._curves[key]

    def fast(self, k: Optional[int], transform: Optional[str] = None) -> CandidateFusion:
        """Sampled-λ evaluator for this k (cached)."""
        key = (k, self._transform(transform))
        if key not in self._fast:
            a = self.video_side(key[1]).astype(np.float32)
            b = self.attr_side(k, key[1]).astype(np.float32)
            self._fast[key] = CandidateFusion.from_transformed(a, b, self.labels)
        return self._fast[key]

    def evaluate(self, k: Optional[int], lam: float, transform: Optional[str] = None) -> float:
        """The metric of the fused scores at ``(k, λ)``."""
        return self.fast(k, transform).accuracy(lam, self.metric)  # type: ignore[arg-type]


# ==================================================================================== sweep spec
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class FloatRange(_Strict):
    """A sampled float: ``low..high``; ``step`` or ``grid`` make it discrete (needed by ``sampler: grid``)."""

    low: float = Field(0.0, ge=0.0, le=1.0)
    high: float = Field(1.0, ge=0.0, le=1.0)
    step: Optional[float] = Field(None, gt=0.0)
    grid: Optional[list[float]] = None

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.low > self.high:
            raise ValueError(f"low={self.low} exceeds high={self.high}")
        if self.grid is not None and not all(0.0 <= g <= 1.0 for g in self.grid):
            raise ValueError("grid values must lie in [0, 1]")
        return self

    def values(self) -> Optional[list[float]]:
        """The discrete values, or None for a continuous range."""
        if self.grid is not None:
            return sorted(set(self.grid))
        if self.step is not None:
            n = int(np.floor((self.high - self.low) / self.step + 1e-9))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        return None


class IntRange(_Strict):
    """A sampled int ``low..high``; ``high: null`` = the number of attributes cached."""

    low: int = Field(1, ge=1)
    high: Optional[int] = Field(None, ge=1)
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.high is not None and self.low > self.high:
            raise ValueError(f"low={self.low} exceeds high={self.high}")
        return self


class SearchSpace(_Strict):
    """What a trial chooses. More dimensions can be added here as fields.

    * ``lam``: ``exact`` (default: solved inside each trial, never sampled), a fixed float, or a
      :class:`FloatRange` to sample.
    * ``k``: an :class:`IntRange` (default 1..number cached), a fixed int, or null (use the cached
      ``attr_scores.npy`` as they are; no re-encoding).
    * ``transform``: null (the source run's ``fusion.transform``), one name, or a list to choose from.
    """

    lam: Union[Literal["exact"], float, FloatRange] = "exact"
    k: Union[None, int, IntRange] = IntRange()
    transform: Union[None, TransformName, list[TransformName]] = None

    @field_validator("lam")
    @classmethod
    def _lam_in_unit(cls, v: Any) -> Any:
        if isinstance(v, float) and not 0.0 <= v <= 1.0:
            raise ValueError("a fixed λ must lie in [0, 1]; or 'exact', or {low, high[, step|grid]}")
        return v

    @field_validator("k")
    @classmethod
    def _k_positive(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("a fixed k must be >= 1; or {low, high} or null")
        return v

    @field_validator("transform")
    @classmethod
    def _transform_nonempty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list; give at least one of 'softmax', 'cosine'")
        return v

    @property
    def exact_lambda(self) -> bool:
        return self.lam == "exact"

    @property
    def searched(self) -> list[str]:
        """The parameters a trial samples."""
        out = ["k"] if isinstance(self.k, IntRange) else []
        out += ["transform"] if isinstance(self.transform, list) else []
        return out + (["lam"] if isinstance(self.lam, FloatRange) else [])


class SourceRef(_Strict):
    """A source run named by experiment spec and variant, for the harness to resolve to a run dir."""

    spec: str = Field(..., description="Experiment spec file, e.g. experiments/table6.yaml.")
    variant: str = Field(..., description="Variant (table cell) inside it, e.g. general.")
    scale: Optional[str] = Field(None, description="Scale the spec is expanded at (e.g. smoke); null: the spec's default.")


class SweepSpec(_Strict):
    """An Optuna study on cached scores (``sweeps/*.yaml``)."""

    study: str = Field(..., min_length=1, description="Optuna study name (also the study directory).")
    description: str = ""
    source_run: Optional[str] = Field(None, description="Run directory holding the caches.")
    source: Optional[SourceRef] = Field(None, description="Or: the spec + variant whose run the harness resolves.")
    attr_run: Optional[str] = Field(None, description="Optional run whose attribute caches are joined by video id.")
    tune_on: Literal["holdout", "reported"] = "holdout"
    split: Optional[Literal["tune", "val", "test"]] = Field(
        None, description="Cached split to tune on; null: 'tune' (holdout) or the source run's eval.split (reported)."
    )
    objective: ObjectiveName = "fused_top1"
    sampler: Literal["tpe", "grid"] = "tpe"
    seed: int = 0
    n_trials: int = Field(50, ge=1, description="Trials per worker.")
    workers: int = Field(1, ge=1, description="Workers sharing the study: one submitit job array of this many tasks.")
    executor: Optional[ExecutorName] = Field(
        None,
        description="Where the workers run: submitit 'local' (default), 'slurm' or 'debug'. One worker runs in "
        "this process unless 'slurm' is named.",
    )
    resources: ResourceSpec = Field(
        default_factory=lambda: ResourceSpec(timeout_min=DEFAULT_WORKER_TIMEOUT_MIN),
        description="Per worker task: timeout_min (wall-clock limit) and slurm.{partition, time, cpus_per_task, mem, "
        "account, qos, array_parallelism, ...} (harness.spec.ResourceSpec).",
    )
    timeout_s: Optional[float] = Field(None, gt=0)
    storage: Optional[str] = Field(
        None,
        description="null: sqlite under the study directory (journal file with executor 'slurm'); "
        "'journal:<path>'; any database URL.",
    )
    results_dir: str = "results"
    experiment: Optional[str] = Field(None, description="MLflow experiment (default: bikebench-tune).")
    space: SearchSpace = SearchSpace()

    @field_validator("resources", mode="after")
    @classmethod
    def _resources_with_limit(cls, v: ResourceSpec) -> ResourceSpec:
        """A worker task always has a wall-clock limit: ``timeout_min`` defaults to DEFAULT_WORKER_TIMEOUT_MIN."""
        return ResourceSpec(timeout_min=DEFAULT_WORKER_TIMEOUT_MIN).merged(v)

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        if self.source_run is None and self.source is None:
            raise ValueError("give source_run (a run directory) or source (spec + variant)")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.study):
            raise ValueError(f"study={self.study!r}: use letters, digits, '_', '-', '.' (it names a directory)")
        if self.sampler == "grid" and isinstance(self.space.lam, FloatRange) and self.space.lam.values() is None:
            raise ValueError("sampler 'grid' needs space.lam to be 'exact', a number, or a range with step or grid")
        if self.tune_on == "holdout" and self.split not in (None, "tune"):
            raise ValueError(
                f"split={self.split!r} is a reported split but tune_on is 'holdout'; use split: tune, or set tune_on: reported"
            )
        return self

    def split_for(self, config: RunConfig) -> str:
        """The cached split to read: ``split``, else ``tune`` (holdout) or ``config.eval.split`` (reported)."""
        if self.split is not None:
            return self.split
        return "tune" if self.tune_on == "holdout" else config.eval.split

    @property
    def metric(self) -> str:
        return OBJECTIVE_METRIC[self.objective]

    def study_dir(self) -> Path:
        return Path(self.results_dir) / "studies" / self.study


class SweepSpecError(ConfigError):
    """A sweep spec that cannot be used; the message names file, field, value and what is allowed."""


def _format_errors(source: str | Path, exc: ValidationError) -> str:
    """``file: invalid sweep spec`` + one ``field.path: got X; message`` line per error."""
    lines = [f"{source}: invalid sweep spec ({exc.error_count()} error(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("literal[", "float", "int", "list[", "FloatRange", "IntRange", "function-")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field (allowed: {', '.join(_allowed_fields(err['loc']))})"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"expected one of {err['ctx']['expected']}"
        lines.append(f"  {loc or '<root>'}: got {err.get('input')!r}; {msg}")
    return "\n".join(dict.fromkeys(lines))


def _allowed_fields(loc: Sequence[Any]) -> list[str]:
    """The field names of the model that holds the unknown key at ``loc`` (SweepSpec, SearchSpace,
    ResourceSpec, SlurmSpec, ...), for the error message."""
    model: Any = SweepSpec
    for part in list(loc)[:-1]:
        info = getattr(model, "model_fields", {}).get(str(part))
        if info is None:
            break
        candidates = [info.annotation, *typing.get_args(info.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return sorted(getattr(model, "model_fields", {}))


def _set_dotted(raw: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = raw
    for i, key in enumerate(keys[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise SweepSpecError(f"{source}: override {dotted!r}: {'.'.join(keys[: i + 1])} is {nxt!r}, not a mapping")
        node = nxt
    node[keys[-1]] = value


def load_sweep_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read a sweep YAML, apply ``dotted.key=value`` overrides (values parsed as YAML), validate.

    Errors name the file and the dotted field path.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SweepSpecError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise SweepSpecError(f"{path}: override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value), str(path))
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SweepSpecError(_format_errors(path, exc)) from None


# ============================================================================== building a problem
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


@dataclass
class ProblemFactory:
    """Builds the :class:`FusionProblem` of a spec in any process (picklable: submitit sends it to the worker tasks).

    Args:
        spec: the sweep spec.
        source_run: the resolved source run directory.
        text_side: builds the text side from the cache; default :class:`EngineTextSideFactory`.
        study_dir: where the on-disk sentence cache lives.
    """

    spec: SweepSpec
    source_run: str
    text_side: Optional[TextSideFactory] = None
    study_dir: Optional[str] = None

    def load_cache(self) -> ScoreCache:
        run = Path(self.source_run)
        config = RunConfig.from_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else RunConfig()
        split = self.spec.split_for(config)
        cache = load_score_cache(run, split)
        if self.spec.attr_run:
            cache = join_score_caches(cache, load_score_cache(self.spec.attr_run, split))
        return cache

    def __call__(self) -> FusionProblem:
        cache = self.load_cache()
        check_split(self.spec, cache)
        scorer = None
        space = self.spec.space
        if space.k is not None:
            if not cache.attributes:
                raise CacheError(
                    f"{cache.run_dir / CACHE_DIR / ATTRIBUTES_FILE}: missing, so space.k cannot be searched; set space.k: null"
                )
            high = k_high(space, cache)
            if high > cache.max_attributes:
                raise SweepSpecError(f"space.k: high={high} exceeds the {cache.max_attributes} attributes cached in {cache.run_dir}")
            text = (self.text_side or EngineTextSideFactory())(cache)
            study_dir = Path(self.study_dir) if self.study_dir else self.spec.study_dir()
            digest = hashlib.sha1(text.encoder_id.encode()).hexdigest()[:12]
            sentence_cache = SentenceEmbeddingCache(text.encode_sentences, study_dir / f"sentences-{digest}.npz", encoder_id=text.encoder_id)
            scorer = AttributeScorer(cache.attributes, text, sentence_cache)
        problem = FusionProblem(cache, metric=self.spec.metric, default_transform=cache.config.fusion.transform, scorer=scorer)
        _check_attr_consistency(problem)
        return problem


def k_high(space: SearchSpace, cache: ScoreCache) -> int:
    """Upper end of the k range: the spec's, else the number of attributes cached."""
    if isinstance(space.k, IntRange):
        return space.k.high if space.k.high is not None else cache.max_attributes
    return int(space.k) if space.k is not None else 0


def check_split(spec: SweepSpec, cache: ScoreCache) -> str:
    """Refuse to tune on the reported split unless ``tune_on: reported``; return the split."""
    split = cache.split
    where = cache.directory / MANIFEST
    if spec.tune_on == "holdout" and split != "tune":
        raise CacheError(
            f"{where}: split is {split!r}, but tune_on is 'holdout' (needs the 'tune' split, held out of the training "
            "list). Point source_run at the run that evaluated the tune split, or set tune_on: reported explicitly."
        )
    return split


def _check_attr_consistency(problem: FusionProblem) -> None:
    """At the source run's own k, recomputed attribute scores should equal the cached ones."""
    cache = problem.cache
    k0 = cache.config.attributes.num_attributes
    if problem.scorer is None or cache.attr_scores is None or k0 > cache.max_attributes:
        return
    diff = float(np.abs(problem.scorer.scores(k0) - cache.attr_scores).max())
    problem.diagnostics["attr_cache_max_abs_diff"] = diff
    problem.diagnostics["attr_cache_k"] = k0
    if diff > ATTR_CONSISTENCY_TOL:
        warnings.warn(
            f"{cache.run_dir}: attribute scores recomputed at k={k0} differ from cache/attr_scores.npy by up to {diff:.3g}; "
            "the text side used for tuning is not the one the run evaluated with",
            stacklevel=2,
        )


# ================================================================================= the objective
def make_objective(problem: FusionProblem, space: SearchSpace, k_max: Optional[int] = None) -> Callable[[Any], float]:
    """An Optuna objective: pick k (and λ unless exact) and return the fused metric.

    Exact λ: the trial's value is the best of the exact curve for its k; the optimum λ (midpoint)
    and its interval are stored as user attributes ``lam``, ``lam_lo``, ``lam_hi``.
    """
    if isinstance(space.k, IntRange):
        high = space.k.high if space.k.high is not None else k_max
        if high is None:
            raise ValueError("space.k has no high and no k_max was given")
    transform_choices = space.transform if isinstance(space.transform, list) else None

    def objective(trial: Any) -> float:
        if isinstance(space.k, IntRange):
            k: Optional[int] = trial.suggest_int("k", space.k.low, high, step=space.k.step)
        else:
            k = space.k
        if transform_choices is not None:
            transform = trial.suggest_categorical("transform", list(transform_choices))
        else:
            transform = space.transform
        if space.exact_lambda:
            curve = problem.curve(k, transform)
            lo, hi, value = curve.best()
            trial.set_user_attr("lam", 0.5 * (lo + hi))
            trial.set_user_attr("lam_lo", lo)
            trial.set_user_attr("lam_hi", hi)
            return value
        if isinstance(space.lam, FloatRange):
            grid = space.lam.values()
            if grid is not None:
                lam = float(trial.suggest_categorical("lam", grid))
            else:
                lam = trial.suggest_float("lam", space.lam.low, space.lam.high)
        else:
            lam = float(space.lam)
        return problem.evaluate(k, lam, transform)

    return objective


# =============================================================================== storage/sampler
def _absolute_storage(storage: str) -> str:
    """``journal:<path>`` and ``sqlite:///<path>`` with the path made absolute (worker tasks may start
    in another directory); other URLs unchanged."""
    for prefix in ("journal:", "sqlite:///"):
        if storage.startswith(prefix):
            path = storage[len(prefix) :]
            if path and path != ":memory:" and not Path(path).is_absolute():
                return prefix + str(Path(path).resolve())
    return storage


def resolve_storage(spec: SweepSpec, study_dir: Path, executor: Optional[str] = None) -> str:
    """The study's storage string, with absolute paths.

    * ``spec.storage`` when given;
    * else the storage a study under ``study_dir`` already uses: ``journal.log``, then ``optuna.db``
      (a study started on SLURM continues in its journal when resumed locally, and the reverse);
    * else, for ``executor == "slurm"``, the journal file ``journal:<study_dir>/journal.log``: worker
      tasks may run on several nodes, and SQLite's file locking is not safe over a network filesystem;
    * else ``sqlite:///<study_dir>/optuna.db``.
    """
    if spec.storage:
        return _absolute_storage(spec.storage)
    study_dir.mkdir(parents=True, exist_ok=True)
    journal, sqlite = (study_dir / JOURNAL_FILE).resolve(), (study_dir / SQLITE_FILE).resolve()
    if journal.exists():
        return f"journal:{journal}"
    if sqlite.exists():
        if executor == "slurm":
            warnings.warn(
                f"{sqlite}: this study already lives in SQLite, so its SLURM workers share that file; that is safe on "
                f"one node only. For workers on several nodes, start a new study with storage: journal:<path>",
                stacklevel=2,
            )
        return f"sqlite:///{sqlite}"
    if executor == "slurm":
        return f"journal:{journal}"
    return f"sqlite:///{sqlite}"


def open_storage(storage: str) -> Any:
    """``journal:<path>`` → JournalStorage(JournalFileBackend); anything else is an RDB URL."""
    import optuna

    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None)


def grid_space(spec: SweepSpec, k_max: int) -> dict[str, list]:
    """The grid sampler's search space: every searched dimension's discrete values."""
    space = spec.space
    grid: dict[str, list] = {}
    if isinstance(space.k, IntRange):
        high = space.k.high if space.k.high is not None else k_max
        grid["k"] = list(range(space.k.low, high + 1, space.k.step))
    if isinstance(space.transform, list):
        grid["transform"] = list(space.transform)
    if isinstance(space.lam, FloatRange):
        grid["lam"] = space.lam.values()  # type: ignore[assignment]
    return grid


def grid_exhausted(spec: SweepSpec, study: Any, k_max: int) -> bool:
    """A grid study whose every point has a complete trial (Optuna's grid sampler would still run one
    more, duplicate, trial for a worker that joins it then)."""
    import itertools

    import optuna

    grid = grid_space(spec, k_max)
    if spec.sampler != "grid" or not grid:
        return False
    names = sorted(grid)
    done = {tuple(t.params.get(n) for n in names)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    return all(point in done for point in itertools.product(*(grid[n] for n in names)))


def make_sampler(spec: SweepSpec, k_max: int, worker: int = 0) -> Any:
    """TPE (seeded per worker so workers explore differently) or a grid over the discrete space (one seed
    for all workers, so that they agree on the numbering of its points)."""
    import optuna

    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed + worker)
    grid = grid_space(spec, k_max)
    if not grid:  # nothing to search (a single trial evaluates the fixed point)
        return optuna.samplers.RandomSampler(seed=spec.seed + worker)
    # one seed for every worker: the grid sampler shuffles its points by the seed, and workers that
    # shuffled differently would number the points differently and run some twice
    return optuna.samplers.GridSampler(grid, seed=spec.seed)


def trials_per_worker(spec: SweepSpec) -> int:
    """``spec.n_trials``, or 1 when the space has nothing to sample."""
    return spec.n_trials if spec.space.searched else 1


def _create_study(spec: SweepSpec, storage: str, sampler: Any) -> Any:
    import optuna

    return optuna.create_study(
        study_name=spec.study, storage=open_storage(storage), sampler=sampler, direction="maximize", load_if_exists=True
    )


#: Trial user attribute naming the worker task that ran it (stale RUNNING trials are recovered by it).
WORKER_ATTR = "worker"
#: Trial user attribute of a re-run: the number of the interrupted trial it repeats.
RETRY_ATTR = "retry_of"


def recover_stale_trials(study: Any, worker: int) -> list[int]:
    """Mark this worker's RUNNING trials FAIL and queue their parameters again; returns the numbers queued.

    A worker runs one trial at a time, so a trial still RUNNING under its index when it (re)starts was
    cut off by a timeout or a preemption: its point is re-run first (``enqueue_trial``; the grid
    sampler leaves enqueued trials alone), so a requeued study loses no point of its space.
    """
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
             if t.user_attrs.get(WORKER_ATTR) == worker]
    done = [t.params for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    retried = []
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        if dict(t.params) in done:  # another worker finished that point meanwhile (the grid sampler
            continue                # gives running points to idle workers): nothing to redo
        study.enqueue_trial(dict(t.params), user_attrs={RETRY_ATTR: int(t.number)}, skip_if_exists=False)
        retried.append(int(t.number))
    return retried


def _worker_main(factory: ProblemFactory, storage: str, worker: int, target_complete: Optional[int] = None) -> list[int]:
    """One worker: build the problem, join the study, run ``spec.n_trials`` trials.

    ``target_complete``: stop once the study holds this many complete trials (all workers together),
    so that a worker requeued after a timeout runs only what is left. Returns the numbers of the
    trials this worker completed.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = factory.spec
    problem = factory()
    kmax = k_high(spec.space, problem.cache)
    study = _create_study(spec, storage, make_sampler(spec, kmax, worker))
    retried = recover_stale_trials(study, worker)
    if retried:
        print(f"study {spec.study} worker {worker}: re-running interrupted trial(s) {retried}", flush=True)
    done: list[int] = []
    inner = make_objective(problem, spec.space, kmax)

    def objective(trial: Any) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)
        return inner(trial)

    def record(_study: Any, trial: Any) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            done.append(int(trial.number))

    callbacks: list[Callable] = [record]
    if grid_exhausted(spec, study, kmax):
        return done
    if target_complete is not None:
        from optuna.study import MaxTrialsCallback

        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if complete >= target_complete:
            return done
        callbacks.append(MaxTrialsCallback(target_complete, states=(optuna.trial.TrialState.COMPLETE,)))
    study.optimize(objective, n_trials=trials_per_worker(spec), timeout=spec.timeout_s, callbacks=callbacks)
    return done


@dataclass
class StudyWorker(submitit.helpers.Checkpointable):
    """One task of a study's worker array (a picklable callable that submitit runs on the node).

    On a timeout or a preemption submitit calls :meth:`checkpoint` and requeues the same task; the
    requeued task re-runs the trial that was cut off (:func:`recover_stale_trials`) and stops at
    ``target_complete`` complete trials, so nothing is lost and nothing is done twice.

    Args:
        factory: builds the problem in the task's process (the parent has validated the caches).
        storage: the study's storage string (absolute paths).
        worker: the task's index in the array; seeds its sampler (``spec.seed + worker``).
        threads: OpenMP/torch threads of the task (None: leave them).
        target_complete: complete trials the study should hold when the array is done.
    """

    factory: ProblemFactory
    storage: str
    worker: int
    threads: Optional[int] = None
    target_complete: Optional[int] = None
    attempts: int = 1

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue this task (the study's storage is its checkpoint)."""
        print(f"study {self.factory.spec.study} worker {self.worker}: checkpoint signal, requeued "
              f"(attempt {self.attempts + 1})", flush=True)
        return submitit.helpers.DelayedSubmission(replace(self, attempts=self.attempts + 1), *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        """Run the worker's trials; returns ``{worker, trials, host, pid, threads, seconds}`` (also printed to the task's log).

        ``threads`` (set for tasks in their own process only) caps the OpenMP/torch threads of the task,
        so that N local tasks do not each start one thread per core (the text tower runs in torch).
        """
        import socket

        if self.threads is not None:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                os.environ[var] = str(self.threads)
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(self.threads)
        t0 = time.perf_counter()
        trials = _worker_main(self.factory, self.storage, self.worker, self.target_complete)
        summary = {
            "worker": self.worker,
            "attempts": self.attempts,
            "trials": trials,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": self.threads,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        print(f"study {self.factory.spec.study} worker {self.worker}: {json.dumps(summary)}", flush=True)
        return summary


class StudyWorkerError(RuntimeError):
    """A task of the worker array failed; the message names each failed task, its job id and its log file."""


def _error_summary(error: BaseException) -> str:
    """The last line of a job's traceback (submitit wraps it in a banner), else the exception's text."""
    text = str(error)
    if "failed during processing with trace" in text:
        body = text.split("-" * 22)
        trace = body[1] if len(body) >= 3 else text
        lines = [line.strip() for line in trace.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def worker_parameters(executor: str, resources: ResourceSpec, job_name: str) -> dict[str, Any]:
    """submitit parameters of the worker array (``harness.executor.slurm_parameters`` /
    ``local_parameters``; the debug executor records the limit only)."""
    from harness.executor import local_parameters, slurm_parameters

    if executor == "slurm":
        return slurm_parameters(resources, job_name=job_name)
    if executor == "local":
        return local_parameters(resources)
    if executor == "debug":
        return {"timeout_min": resources.timeout_min}
    raise SweepSpecError(f"executor: got {executor!r}; expected one of 'local', 'slurm' or 'debug'")


def worker_threads(executor: str, resources: ResourceSpec, workers: int) -> Optional[int]:
    """Threads per worker task: ``slurm.cpus_per_task`` when set; local tasks share this machine's cores
    (``cpu_count // workers``); None for debug (tasks run in this process) and for SLURM without it."""
    if executor == "debug":
        return None
    if resources.slurm.cpus_per_task is not None:
        return resources.slurm.cpus_per_task
    if executor == "local":
        return max(1, (os.cpu_count() or 1) // workers)
    return None


def run_worker_array(
    factory: ProblemFactory,
    storage: str,
    workers: int,
    executor: str,
    resources: ResourceSpec,
    study_dir: Path,
    poll_s: float = DEFAULT_WORKER_POLL_S,
    log: Callable[[str], None] = print,
    target_complete: Optional[int] = None,
) -> list[dict[str, Any]]:
    """Submit ``workers`` :class:`StudyWorker` tasks as ONE submitit job array and wait for all of them.

    ``target_complete``: complete trials the study should hold at the end (a requeued task stops there).

    Logs, pickles and results go to a folder of this invocation, ``<study_dir>/submitit/<time>-<pid>-<hex>/``
    (one sub-folder per task). Raises :class:`StudyWorkerError` naming every failed task (index, job id,
    the last line of its error, its stderr log) once all tasks have ended. Ctrl-C cancels the tasks.
    Returns each task's summary, in task order.
    """
    from harness.executor import invocation_folder, make_executor

    params = worker_parameters(executor, resources, job_name=f"tune-{factory.spec.study}")
    folder = invocation_folder(study_dir)
    ex = make_executor(executor, folder / "%j", resources, params)
    with ex.batch():
        jobs = [ex.submit(StudyWorker(factory, storage, w, worker_threads(executor, resources, workers), target_complete))
                for w in range(workers)]
    ids = [str(j.job_id) for j in jobs]
    log(f"study {factory.spec.study}: {workers} worker(s) submitted as one {executor} job array "
        f"({', '.join(ids)}); logs under {folder}")
    try:
        if executor != "debug":  # a debug job runs (in this process) when its outcome is asked for
            while not all(j.done() for j in jobs):
                time.sleep(poll_s)
        summaries: list[dict[str, Any]] = []
        failures: list[str] = []
        for index, job in enumerate(jobs):
            try:
                error = job.exception()
            except Exception as exc:  # noqa: BLE001 - e.g. UncompletedJobError for a killed or cancelled task
                error = exc
            if error is None:
                summaries.append(job.result())
                continue
            failures.append(
                f"  array task {index} (job {job.job_id}): {_error_summary(error)}\n"
                f"    log: {job.paths.stderr}"
            )
    except KeyboardInterrupt:
        for job in jobs:
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - best effort
                pass
        log(f"study {factory.spec.study}: interrupted; cancelled the worker tasks {', '.join(ids)}")
        raise
    if failures:
        raise StudyWorkerError(
            f"study {factory.spec.study}: {len(failures)} of {workers} worker task(s) of the {executor} job array failed "
            f"(storage {storage}; complete trials are kept, re-run to continue):\n" + "\n".join(failures)
        )
    return summaries


# ================================================================================= running a study
@dataclass
class StudyResult:
    """The outcome of :func:`run_study`.

    Attributes:
        best_params: the best trial's params, plus ``lam`` when λ was solved exactly.
        best_value: its objective value (a fraction).
        best_lambda: the λ to use; lam_interval: the exact optimum interval for the best params.
        n_complete: complete trials in the study (all workers, all sessions).
        trial_seconds: wall time of the optimisation loop of this call (excludes logging).
    """

    study: str
    best_params: dict
    best_value: float
    best_lambda: float
    lam_interval: tuple[float, float]
    n_complete: int
    study_dir: Path
    storage: str
    objective: str
    tune_on: str
    split: str
    trial_seconds: float = 0.0
    mlflow_run_id: Optional[str] = None
    extras: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "study": self.study,
            "objective": self.objective,
            "best_value": self.best_value,
            "best_params": self.best_params,
            "best_lambda": self.best_lambda,
            "lam_interval": list(self.lam_interval),
            "n_complete": self.n_complete,
            "tune_on": self.tune_on,
            "split": self.split,
            "tuned_on_reported_split": self.tune_on == "reported",
            "storage": self.storage,
            "mlflow_run_id": self.mlflow_run_id,
            "trial_loop_seconds": self.trial_seconds,
            **self.extras,
        }


def run_study(
    spec: SweepSpec,
    factory: ProblemFactory,
    workers: Optional[int] = None,
    tracking_uri: Optional[str] = None,
    artifact_location: Optional[str] = None,
    study_dir: Optional[str | Path] = None,
    executor: Optional[str] = None,
    resources: Optional[ResourceSpec] = None,
    poll_s: float = DEFAULT_WORKER_POLL_S,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or continue) the study.

    ``workers`` (default ``spec.workers``) > 1 go out as ONE submitit job array of that many
    :class:`StudyWorker` tasks on ``executor`` (default ``spec.executor``, else ``local``) with
    ``spec.resources`` overridden by ``resources``; the parent waits for the array and fails with a
    :class:`StudyWorkerError` naming each failed task and its log. One worker runs in this process
    (no submission) unless the executor is ``slurm``. Each worker runs ``spec.n_trials`` trials (one
    when nothing is sampled). A study name is bound to its source run, split, objective and space:
    continuing it with others is refused. Afterwards the parent computes the exact λ curve for the
    best params, writes ``<study_dir>/best.json`` and the plots, and logs everything to MLflow when
    ``tracking_uri`` is given (outside the timed trial loop).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workers = workers or spec.workers
    if workers < 1:
        raise SweepSpecError(f"workers: got {workers}; expected >= 1")
    cluster = executor or spec.executor or "local"
    if cluster not in ("local", "slurm", "debug"):
        raise SweepSpecError(f"executor: got {cluster!r}; expected one of 'local', 'slurm' or 'debug'")
    res = spec.resources.merged(resources)
    in_process = workers == 1 and cluster != "slurm"
    if not in_process:
        worker_parameters(cluster, res, job_name=f"tune-{spec.study}")  # resources that cannot work fail before anything else
        limit_s = float(res.timeout_min or 0) * 60
        if spec.timeout_s is not None and spec.timeout_s >= limit_s:
            raise SweepSpecError(
                f"timeout_s={spec.timeout_s:g} is not below the worker tasks' wall-clock limit resources.timeout_min="
                f"{res.timeout_min:g} ({limit_s:g} s): a task would be killed in the middle of a trial; "
                "expected timeout_s < 60 * resources.timeout_min"
            )
    study_dir = Path(study_dir) if study_dir is not None else spec.study_dir()
    study_dir.mkdir(parents=True, exist_ok=True)
    if factory.study_dir is None:
        factory.study_dir = str(study_dir.resolve())
    storage = resolve_storage(spec, study_dir, cluster)
    problem = factory()
    kmax = k_high(spec.space, problem.cache)
    study = _create_study(spec, storage, make_sampler(spec, kmax, 0))
    identity = {
        "objective": spec.objective,
        "tune_on": spec.tune_on,
        "split": problem.cache.split,
        "source_run": str(Path(factory.source_run).resolve()),
        "space": spec.space.model_dump_json(),
    }
    for key, value in identity.items():
        before = study.user_attrs.get(key)
        if before is not None and before != value:
            raise SweepSpecError(
                f"study {spec.study!r} in {storage} was run with {key}={before!r}, now {value!r}; "
                "its trials would not be comparable: use another study name (or storage)"
            )
        study.set_user_attr(key, value)
    t0 = time.perf_counter()
    if in_process:
        study.optimize(make_objective(problem, spec.space, kmax), n_trials=trials_per_worker(spec), timeout=spec.timeout_s)
        worker_info: dict[str, Any] = {"executor": "in-process", "workers": 1}
    else:
        before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        summaries = run_worker_array(factory, storage, workers, cluster, res, study_dir, poll_s=poll_s, log=log,
                                     target_complete=before + workers * trials_per_worker(spec))
        worker_info = {
            "executor": cluster,
            "workers": workers,
            "trials_per_worker": [len(w["trials"]) for w in summaries],
            "hosts": sorted({str(w["host"]) for w in summaries}),
        }
    trial_seconds = time.perf_counter() - t0
    study = _create_study(spec, storage, make_sampler(spec, kmax, 0))
    result = summarise_study(spec, study, problem, study_dir, storage, trial_seconds, factory.source_run)
    result.extras["worker_array"] = worker_info
    write_artifacts(spec, study, problem, result, study_dir)
    if tracking_uri:
        result.mlflow_run_id = log_study_to_mlflow(spec, study, result, study_dir, tracking_uri, artifact_location)
        (study_dir / "best.json").write_text(json.dumps(result.to_json(), indent=2))
    return result


def summarise_study(
    spec: SweepSpec, study: Any, problem: FusionProblem, study_dir: Path, storage: str, trial_seconds: float, source_run: str
) -> StudyResult:
    """Best params/value and the exact λ interval for them."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {spec.study}: no complete trial")
    best = study.best_trial
    params = dict(best.params)
    k = params.get("k", spec.space.k if not isinstance(spec.space.k, IntRange) else None)
    transform = params.get("transform", spec.space.transform if isinstance(spec.space.transform, str) else None)
    curve = problem.curve(k, transform)
    lo, hi, exact_value = curve.best()
    extras: dict[str, Any] = {
        "source_run": str(Path(source_run).resolve()),
        "transform": transform or problem.default_transform,
        "classes": list(problem.cache.classes),
        **problem.diagnostics,
    }
    if spec.space.exact_lambda:
        best_lambda = float(best.user_attrs.get("lam", 0.5 * (lo + hi)))
        params["lam"] = best_lambda
    else:
        best_lambda = float(params.get("lam", spec.space.lam))  # type: ignore[arg-type]
        extras["exact_best_lambda"] = 0.5 * (lo + hi)
        extras["exact_best_value"] = exact_value
    if k is not None:
        params["k"] = k
    return StudyResult(
        study=spec.study,
        best_params=params,
        best_value=float(best.value),
        best_lambda=best_lambda,
        lam_interval=(lo, hi),
        n_complete=len(complete),
        study_dir=study_dir,
        storage=storage,
        objective=spec.objective,
        tune_on=spec.tune_on,
        split=problem.cache.split,
        trial_seconds=trial_seconds,
        extras=extras,
    )


# ============================================================================ artifacts and MLflow
def write_artifacts(spec: SweepSpec, study: Any, problem: FusionProblem, result: StudyResult, study_dir: Path) -> dict[str, Path]:
    """``best.json``, the λ curve (PNG + JSON) and Optuna's matplotlib plots as PNGs.

    A plot that cannot be made (too few trials, a single parameter, a missing optional package) is
    skipped and its reason recorded in ``plots.json``.
    """
    out: dict[str, Path] = {}
    best_path = study_dir / "best.json"
    best_path.write_text(json.dumps(result.to_json(), indent=2))
    out["best.json"] = best_path
    k = result.best_params.get("k")
    transform = result.extras.get("transform")
    curve = problem.curve(k if isinstance(k, int) else None, transform)
    out["lambda_curve.png"] = curve.plot(
        study_dir / "lambda_curve.png",
        title=f"{spec.study}: exact {curve.metric} vs λ (k={k}, {curve.transform}, {result.split} split)",
        mark=None if spec.space.exact_lambda else result.best_lambda,
    )
    curve_json = study_dir / "lambda_curve.json"
    curve_json.write_text(json.dumps(curve.to_dict()))
    out["lambda_curve.json"] = curve_json
    out.update(_optuna_plots(study, study_dir))
    if spec.space.exact_lambda:
        out.update(_exact_surface(spec, study, problem, result, study_dir))
    return out


#: λ samples of the exact k × λ surface (the curves are exact step functions; this is only the raster).
SURFACE_LAMBDAS = 401


def exact_surface(problem: FusionProblem, ks: Sequence[int], transform: Optional[str], n_lam: int = SURFACE_LAMBDAS) -> dict[str, Any]:
    """The objective on a ``[len(ks), n_lam]`` grid of (k, λ), read off each k's exact λ curve.

    Returns ``{"k": [...], "lam": [...], "values": [[...]] (fractions), "metric", "transform"}``.
    """
    lams = np.linspace(0.0, 1.0, n_lam)
    rows = [problem.curve(int(k), transform).at(lams) for k in ks]
    return {"k": [int(k) for k in ks], "lam": lams.tolist(), "values": [np.asarray(r, dtype=float).tolist() for r in rows],
            "metric": problem.metric, "transform": problem._transform(transform)}


def _exact_surface(spec: SweepSpec, study: Any, problem: FusionProblem, result: StudyResult, study_dir: Path) -> dict[str, Path]:
    """With λ solved exactly Optuna sees one parameter (k), so its contour and importance plots have
    nothing to show; this writes the exact objective over k × λ instead (``exact_k_lambda.{json,png}``)."""
    import optuna

    ks = sorted({t.params["k"] for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                 if isinstance(t.params.get("k"), int)})
    report_path = study_dir / "plots.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if len(ks) < 2:
        report["exact_k_lambda"] = f"skipped: needs >= 2 values of k tried (have {ks})"
        report_path.write_text(json.dumps(report, indent=2))
        return {}
    surface = exact_surface(problem, ks, result.extras.get("transform"))
    out: dict[str, Path] = {}
    data_path = study_dir / "exact_k_lambda.json"
    data_path.write_text(json.dumps(surface))
    out["exact_k_lambda.json"] = data_path
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 0.9 + 0.28 * len(ks)), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        values = 100.0 * np.asarray(surface["values"])
        lams = np.asarray(surface["lam"])
        edges_l = np.concatenate([[0.0], 0.5 * (lams[1:] + lams[:-1]), [1.0]])
        edges_k = np.arange(len(ks) + 1) - 0.5
        mesh = ax.pcolormesh(edges_l, edges_k, values, shading="flat", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label=f"{surface['metric']} (%)")
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        best_k = result.best_params.get("k")
        if best_k in ks:
            lo, hi = result.lam_interval
            ax.plot([lo, hi], [ks.index(best_k)] * 2, color="red", linewidth=3, label=f"best: k={best_k}, λ∈[{lo:.3f}, {hi:.3f}]")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_xlabel("λ (weight of the video branch)")
        ax.set_ylabel("k (attributes)")
        ax.set_title(f"{spec.study}: exact {surface['metric']} over k × λ ({surface['transform']})", fontsize=9)
        fig.tight_layout()
        png = study_dir / "exact_k_lambda.png"
        fig.savefig(png)
        out["exact_k_lambda.png"] = png
        report["exact_k_lambda"] = "ok"
    except Exception as exc:  # a plot never fails the study
        report["exact_k_lambda"] = f"failed: {type(exc).__name__}: {exc}"
    for name in ("contour", "param_importances"):
        if str(report.get(name, "")).startswith("skipped"):
            report[name] += "; λ is solved exactly inside each trial: see exact_k_lambda.png (the exact objective over k × λ)"
    report_path.write_text(json.dumps(report, indent=2))
    return out


def _optuna_plots(study: Any, study_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = sorted({p for t in complete for p in t.params})
    varying = [p for p in names if len({repr(t.params.get(p)) for t in complete}) > 1]
    report: dict[str, str] = {}
    out: dict[str, Path] = {}

    def save(name: str, make: Callable[[], Any], reason_missing: Optional[str]) -> None:
        if reason_missing:
            report[name] = f"skipped: {reason_missing}"
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
            path = study_dir / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            out[f"{name}.png"] = path
            report[name] = "ok"
        except Exception as exc:  # a plot never fails the study
            report[name] = f"failed: {type(exc).__name__}: {exc}"
            plt.close("all")

    save("optimization_history", lambda: ovm.plot_optimization_history(study), None)
    few = None if len(varying) >= 2 else f"needs >= 2 varying parameters (have {varying})"
    enough = few or (None if len(complete) >= 4 else f"needs >= 4 complete trials (have {len(complete)})")

    def importance() -> Any:
        # PED-ANOVA: Optuna's own evaluator, no scikit-learn (fANOVA's forest) needed.
        return ovm.plot_param_importances(study, params=varying, evaluator=optuna.importance.PedAnovaImportanceEvaluator())

    save("param_importances", importance, enough)
    save("contour", lambda: ovm.plot_contour(study, params=varying[:2]), few)
    plots = study_dir / "plots.json"
    plots.write_text(json.dumps(report, indent=2))
    out["plots.json"] = plots
    return out


def _default_artifact_location(tracking_uri: str, results_dir: str, experiment: str) -> Optional[str]:
    """``<results>/mlartifacts/<experiment>`` (absolute, as MLflow 3 needs with a local store; the
    layout of ``harness.tracking``); a tracking server chooses its own."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return (Path(results_dir).resolve() / "mlartifacts" / experiment).as_uri()


def log_study_to_mlflow(
    spec: SweepSpec,
    study: Any,
    result: StudyResult,
    study_dir: Path,
    tracking_uri: str,
    artifact_location: Optional[str] = None,
) -> str:
    """A parent run per study and a child run per complete trial, in batches; idempotent.

    Re-logging the same study reuses its parent run (tag ``optuna_study`` + ``optuna_storage``) and
    skips trials already logged (tag ``optuna_trial``). Returns the parent run id.
    """
    import optuna
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_name = spec.experiment or "bikebench-tune"
    exp = client.get_experiment_by_name(exp_name)
    if exp is None:
        location = artifact_location or _default_artifact_location(tracking_uri, spec.results_dir, exp_name)
        exp_id = client.create_experiment(exp_name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    metric_key = spec.objective
    base_tags = {"bikebench_kind": "study", "optuna_study": spec.study, "optuna_storage": result.storage}
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.optuna_study = '{spec.study}' and tags.bikebench_kind = 'study'",
        max_results=50,
    )
    parent = next((r for r in found if r.data.tags.get("optuna_storage") == result.storage), None)
    if parent is None:
        parent = client.create_run(exp_id, run_name=spec.study, tags=base_tags)
    parent_id = parent.info.run_id
    children = client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=50_000
    )
    logged = {r.data.tags.get("optuna_trial") for r in children}
    now = int(time.time() * 1000)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if str(t.number) in logged:
            continue
        ts = int(t.datetime_complete.timestamp() * 1000) if t.datetime_complete else now
        params = {**t.params, **{k: v for k, v in t.user_attrs.items() if k in ("lam", "lam_lo", "lam_hi")}}
        child = client.create_run(
            exp_id,
            run_name=f"{spec.study}-trial-{t.number}",
            start_time=int(t.datetime_start.timestamp() * 1000) if t.datetime_start else ts,
            tags={"mlflow.parentRunId": parent_id, "optuna_trial": str(t.number), "optuna_study": spec.study, "tune_on": spec.tune_on},
        )
        client.log_batch(
            child.info.run_id,
            metrics=[Metric(metric_key, float(t.value), ts, t.number)],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(child.info.run_id, end_time=ts)
    flat = {f"best_{k}": v for k, v in result.best_params.items()}
    tags = {
        "tune_on": spec.tune_on,
        "split": result.split,
        "source_run": result.extras.get("source_run", ""),
        "lam_mode": "exact" if spec.space.exact_lambda else "sampled",
    }
    if spec.tune_on == "reported":
        tags["tuned_on_reported_split"] = "true"
    client.log_batch(
        parent_id,
        metrics=[
            Metric(f"best_{metric_key}", result.best_value, now, 0),
            Metric("best_lambda", result.best_lambda, now, 0),
            Metric("n_complete", float(result.n_complete), now, 0),
        ],
        params=[Param(k, str(v)) for k, v in {
            "objective": spec.objective,
            "sampler": spec.sampler,
            "n_trials_per_worker": spec.n_trials,
            "space": spec.space.model_dump_json(),
        }.items() if not _param_logged(parent, k)],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in flat.items() if isinstance(v, (int, float))])
    for name in ("best.json", "lambda_curve.png", "lambda_curve.json", "optimization_history.png",
                 "param_importances.png", "contour.png", "exact_k_lambda.png", "exact_k_lambda.json", "plots.json"):
        path = study_dir / name
        if path.exists():
            client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id)
    return parent_id


def _param_logged(run: Any, key: str) -> bool:
    return key in (run.data.params or {})


# ================================================================== a finished study's λ, elsewhere
BEST_FILE = "best.json"


class StudyLambdaError(ConfigError):
    """A study's ``best.json`` that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class StudyLambda:
    """The λ a finished study chose, read from its ``best.json`` (see :func:`read_study_lambda`).

    Attributes:
        path: the ``best.json`` read.
        study: the study name.
        best_lambda: the λ to use; lam_interval: the exact optimum interval of the best params.
        best_params: the best trial's params (``k``, ``lam``, ``transform`` when searched).
        split: the cached split the study tuned on; tune_on: ``holdout`` or ``reported``.
        objective: ``fused_top1`` / ``fused_mean_class``; transform: the score transform λ was tuned for.
        source_run: the run whose caches the study read (absolute path, when recorded).
        classes: the class names of the study's scores, in column order.
    """

    path: Path
    study: str
    best_lambda: float
    lam_interval: tuple[float, float]
    best_params: dict
    split: str
    tune_on: str
    objective: str
    transform: Optional[str]
    source_run: Optional[str]
    classes: list[str]

    @property
    def tuned_on_reported_split(self) -> bool:
        """The study chose λ on the split that is reported (``tune_on: reported``)."""
        return self.tune_on == "reported"


def resolve_study_best(ref: str | Path, results_dir: str | Path = "results") -> Path:
    """``ref`` → a ``best.json`` path: a ``best.json`` file, a study directory holding one, or a study
    name looked up as ``<results_dir>/studies/<ref>/best.json``. Raises :class:`StudyLambdaError`
    listing the places tried (and the studies that exist) when none has a ``best.json``."""
    given = Path(ref)
    studies = Path(results_dir) / "studies"
    tried = [given] if given.suffix == ".json" else [given / BEST_FILE]
    if re.fullmatch(r"[A-Za-z0-9_.\-]+", str(ref)):
        tried.append(studies / str(ref) / BEST_FILE)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    known = sorted(d.name for d in studies.iterdir() if (d / BEST_FILE).is_file()) if studies.is_dir() else []
    raise StudyLambdaError(
        f"study {str(ref)!r}: no {BEST_FILE} at {' or '.join(str(t) for t in tried)}; expected a best.json, a study "
        f"directory or a study name under {studies} (studies with a best.json there: {known or 'none'}); "
        "run `bikebench tune SWEEP` first"
    )


def _study_classes(raw: dict, path: Path) -> list[str]:
    """``classes`` of best.json, else the class list of the source run's cache of the study's split."""
    classes = raw.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    if classes is not None:
        raise StudyLambdaError(f"{path}: field 'classes': expected a non-empty list of class names, got {classes!r}")
    source, split = raw.get("source_run"), raw.get("split")
    manifest = Path(str(source)) / CACHE_DIR / str(split) / MANIFEST if source and split else None
    if manifest is None or not manifest.is_file():
        raise StudyLambdaError(
            f"{path}: no field 'classes' (a study from before it was recorded), and the source run's cache "
            f"{manifest or '<source_run>/cache/<split>/manifest.json'} is not readable: the study's classes cannot be "
            "checked against the table's runs; re-run `bikebench tune` to rewrite best.json"
        )
    try:
        listed = json.loads(manifest.read_text()).get("classes")
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyLambdaError(f"{path}: the source run's {manifest} is unreadable ({exc}); cannot check the study's classes") from None
    if not isinstance(listed, list) or not listed:
        raise StudyLambdaError(f"{manifest}: field 'classes' missing or empty; cannot check the study's classes")
    return [str(c) for c in listed]


def read_study_lambda(path: str | Path) -> StudyLambda:
    """Read and check a study's ``best.json`` (written by :func:`run_study`).

    Required fields: ``study`` (str), ``best_lambda`` (in [0, 1]), ``lam_interval`` ([lo, hi]),
    ``split`` (str), ``tune_on`` (``holdout``/``reported``); ``classes`` (else read from the source
    run's cache manifest). Every error names the file and the field.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise StudyLambdaError(f"{path}: file not found; run `bikebench tune SWEEP` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyLambdaError(f"{path}: not a readable JSON file ({exc}); re-run `bikebench tune` to rewrite it") from None
    if not isinstance(raw, dict):
        raise StudyLambdaError(f"{path}: expected a JSON object, got {type(raw).__name__}")

    def need(key: str, kind: Any, what: str) -> Any:
        value = raw.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise StudyLambdaError(f"{path}: field {key!r}: expected {what}, got {value!r}")
        return value

    lam = float(need("best_lambda", (int, float), "a number in [0, 1]"))
    if not 0.0 <= lam <= 1.0:
        raise StudyLambdaError(f"{path}: field 'best_lambda': expected a number in [0, 1], got {lam}")
    interval = need("lam_interval", list, "[lo, hi]")
    if len(interval) != 2 or not all(isinstance(x, (int, float)) for x in interval):
        raise StudyLambdaError(f"{path}: field 'lam_interval': expected [lo, hi], got {interval!r}")
    tune_on = need("tune_on", str, "'holdout' or 'reported'")
    if tune_on not in ("holdout", "reported"):
        raise StudyLambdaError(f"{path}: field 'tune_on': expected 'holdout' or 'reported', got {tune_on!r}")
    params = raw.get("best_params") or {}
    return StudyLambda(
        path=path,
        study=need("study", str, "the study name"),
        best_lambda=lam,
        lam_interval=(float(interval[0]), float(interval[1])),
        best_params=dict(params) if isinstance(params, dict) else {},
        split=need("split", str, "the split the study tuned on"),
        tune_on=tune_on,
        objective=str(raw.get("objective", "fused_top1")),
        transform=str(raw["transform"]) if raw.get("transform") else None,
        source_run=str(raw["source_run"]) if raw.get("source_run") else None,
        classes=_study_classes(raw, path),
    )


def load_study_lambda(ref: str | Path, results_dir: str | Path = "results") -> StudyLambda:
    """:func:`resolve_study_best` then :func:`read_study_lambda`."""
    return read_study_lambda(resolve_study_best(ref, results_dir))


#: Metrics :func:`fused_metric` computes (bike.metrics, in percent like result.json).
FUSED_METRICS = ("top1", "top5", "mean_class")


def fused_metric(cache: ScoreCache, lam: float, metric: str = "top1", transform: Optional[str] = None) -> float:
    """A metric (percent, as evaluation reports it) of ``λ·T(S_V) + (1 − λ)·T(S_A)`` on one cached split.

    ``T`` is ``transform`` (default: the run's ``fusion.transform``); view-averaged probabilities are
    taken as the softmax side, as evaluation does (:meth:`FusionProblem.video_side`). Unlabelled rows are
    skipped. No network runs: only the cached ``video_scores`` and ``attr_scores`` are read.
    """
    from bike.metrics import mean_class_accuracy, topk_accuracy

    if metric not in FUSED_METRICS:
        raise ValueError(f"fused_metric: metric={metric!r}; expected one of {FUSED_METRICS}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"fused_metric: lam={lam}; expected a value in [0, 1]")
    problem = FusionProblem(cache, default_transform=transform or cache.config.fusion.transform)
    fused = lam * problem.video_side() + (1.0 - lam) * problem.attr_side(None)
    if metric == "mean_class":
        return float(mean_class_accuracy(fused, problem.labels))
    return float(topk_accuracy(fused, problem.labels, ks=(int(metric[3:]),))[metric])


# ===================================================================================== entry point
SourceResolver = Callable[[SourceRef], Path]


def resolve_source_run(spec: SweepSpec, resolver: Optional[SourceResolver] = None) -> Path:
    """``source_run`` as given, else ``source`` (spec + variant) through the harness's resolver.

    The resolver defaults to ``harness.expand.resolve_source_run(ref, results=spec.results_dir)``: the
    run directory of that variant at ``ref.scale`` (its training run also caches the ``tune`` split
    when ``data.tuning_holdout > 0``).
    """
    if spec.source_run:
        run = Path(spec.source_run)
        if not run.is_dir():
            raise CacheError(f"source_run: {run} is not a directory")
        return run
    assert spec.source is not None
    if resolver is None:
        try:
            from harness.expand import resolve_source_run as expand_resolver
        except ImportError:
            raise SweepSpecError(
                f"source: {spec.source.spec} / {spec.source.variant}: no resolver from spec + variant to a run directory "
                "(harness.expand.resolve_source_run); give source_run: <run dir> instead"
            ) from None
        results_dir = spec.results_dir
        resolver = lambda ref: expand_resolver(ref, results=results_dir)  # noqa: E731
    return Path(resolver(spec.source))


def tune_main(
    spec_path: str | Path,
    overrides: Sequence[str] = (),
    tracking_uri: Optional[str] = None,
    *,
    text_side: Optional[TextSideFactory] = None,
    resolver: Optional[SourceResolver] = None,
    workers: Optional[int] = None,
    executor: Optional[str] = None,
    resources: Optional[ResourceSpec] = None,
    poll_s: float = DEFAULT_WORKER_POLL_S,
) -> int:
    """``bikebench tune SPEC [key=value ...] [--workers N] [--executor local|slurm|debug]``: run the study,
    print the best; exit code.

    ``tracking_uri``: where the study is logged (the CLI passes ``--tracking-uri`` or
    ``harness.tracking.resolve_tracking_uri``'s default); None skips MLflow. ``workers``, ``executor``
    and ``resources`` override the spec's (command line over spec). Returns 0 on success, 1 when a
    worker task failed (the message names the task and its log), 2 on a bad spec or unusable caches
    (the message on stderr names the file and field).
    """
    try:
        spec = load_sweep_spec(spec_path, overrides)
        source = resolve_source_run(spec, resolver)
        factory = ProblemFactory(spec=spec, source_run=str(source), text_side=text_side)
        result = run_study(spec, factory, workers=workers, tracking_uri=tracking_uri, executor=executor,
                           resources=resources, poll_s=poll_s)
    except (ConfigError, CacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StudyWorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lo, hi = result.lam_interval
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    print(
        f"study {result.study}: best {result.objective} = {100 * result.best_value:.2f}% at {params} "
        f"(λ optimal on [{lo:.4f}, {hi:.4f}]; {result.n_complete} trials on the {result.split} split"
        f"{', TUNED ON THE REPORTED SPLIT' if result.tune_on == 'reported' else ''})"
    )
    print(f"best params: {result.study_dir / 'best.json'}")
    if result.mlflow_run_id:
        print(f"mlflow parent run: {result.mlflow_run_id}")
    return 0
