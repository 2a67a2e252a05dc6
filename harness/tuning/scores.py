"""Reading one run's cached evaluation scores: :class:`ScoreCache` and its readers.

The layout ``bike.engine.caches`` writes (docs/ARCHITECTURE.md "Run directory"): one split's
``<run>/cache/<split>/`` (:func:`load_score_cache`), the run's ranked attribute phrases
(:func:`read_attributes_file`), the splits cached (:func:`cached_splits`), and two runs' caches
joined by video id (:func:`join_score_caches`). Errors are :class:`CacheError`, naming the file.

Shapes: N videos, K classes, D text embedding width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from bike.config import RunConfig


#: Cache layout (bike.engine.caches): <run_dir>/cache/<split>/{manifest.json, *.npy, video_ids.json}.
CACHE_DIR = "cache"
MANIFEST = "manifest.json"
ATTRIBUTES_FILE = "attributes.json"


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
