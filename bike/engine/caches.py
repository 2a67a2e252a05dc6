"""Cached evaluation scores: the one reader/writer (:class:`ScoreCache`), and what is computed from them
without running the network.

Layout, one directory per split (``<run_dir>/cache/<split>/``, e.g. ``cache/val/``, ``cache/tune/``; the released
Kinetics-600 zero-shot protocol writes one per split list, ``cache/val_k600_split1/`` ..., :func:`k600_split_cache_name`)::

    video_scores.npy  [N, K] float32  video branch, unscaled (``score_kind`` says logits or view-averaged probabilities)
    attr_scores.npy   [N, K] float32  attributes branch (when enabled), unscaled logits
    labels.npy        [N] int64 or [N, K] int64 multi-hot
    video_ids.json    N ids, row order of every array
    class_emb.npy     [K, D] float32  category [CLS] embeddings (as the text tower gives them)
    frame_emb.npy     [N, T, D] float32  raw per-frame image features, mean over views (optional)
    view_scores.npy   [N, V, K] float16  per-view unscaled video logits (multi-view runs)
    manifest.json     shapes, dtypes, split, config hash, classes, score kind, views, ...

and ``<run_dir>/cache/attributes.json``: the run's ranked attribute phrases per video id.

``manifest.json`` is written last, so a cache with a manifest is complete. Every file is written
atomically. :func:`write_cache` writes a split, :func:`read_cache` reads one directory,
:func:`load_score_cache` one split of a run (with its phrases and config); :func:`join_score_caches`
joins two runs' caches by video id, never by row order. Errors are :class:`CacheError`, naming the file.

From a cache: fusion (Eq. 4, ``bike.fusion``) at any λ, view aggregation, class-subset protocols
(zero-shot half-class splits) — all without the network.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bike.config import RunConfig
from bike.fusion import ScoreKind
from bike.metrics import aggregate_views, topk_accuracy
from bike.rundir import (
    ATTRIBUTES_FILE,
    CACHE_DIR,
    CONFIG_FILE,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_text,
    cache_dir,
)

MANIFEST = "manifest.json"
VIDEO_IDS_FILE = "video_ids.json"
CACHE_FORMAT_VERSION = 1

_ARRAYS = {
    "video_scores": ("video_scores.npy", np.float32),
    "attr_scores": ("attr_scores.npy", np.float32),
    "labels": ("labels.npy", np.int64),
    "class_emb": ("class_emb.npy", np.float32),
    "frame_emb": ("frame_emb.npy", np.float32),
    "view_scores": ("view_scores.npy", np.float16),
}
#: Arrays with one row per video.
_PER_VIDEO = ("video_scores", "attr_scores", "labels", "frame_emb", "view_scores")


class CacheError(ValueError):
    """A cache that is missing or inconsistent; the message names the file."""


def split_cache_dir(run_dir: str | Path, split: str) -> Path:
    """``<run_dir>/cache/<split>``."""
    return cache_dir(run_dir) / split


def k600_split_cache_name(split: str, index: int) -> str:
    """Cache directory name of split list ``index`` (0-based) of the released Kinetics-600 zero-shot protocol
    (``eval.k600_split_lists``): ``<split>_k600_split<index + 1>``, numbered as the released
    ``test_split{1,2,3}_exist.txt``."""
    return f"{split}_k600_split{index + 1}"


def attributes_cache_path(run_dir: str | Path) -> Path:
    """``<run_dir>/cache/attributes.json`` (ranked attribute phrases per video id)."""
    return cache_dir(run_dir) / ATTRIBUTES_FILE


# ---------------------------------------------------------------------------------------- data
@dataclass
class ScoreCache:
    """One split's cached scores, rows aligned by ``video_ids``. Arrays may be read-only memory maps.

    Attributes:
        video_ids: ``[N]`` ids, unique. labels: ``[N]`` class indices (negative = unlabelled) or ``[N, K]`` multi-hot.
        video_scores: ``[N, K]`` video-branch scores (``score_kind``: unscaled ``logits``, or
            ``probabilities`` averaged over views — already softmaxed).
        classes: ``[K]`` class names. attr_scores: ``[N, K]`` attribute-branch cosine scores (optional).
        class_emb ``[K, D]``, frame_emb ``[N, T, D]``, view_scores ``[N, V, K]``: optional.
        extra: the manifest's ``extra``; manifest: the whole ``manifest.json``.
        directory: ``<run_dir>/cache/<split>``; run_dir: the run directory (:func:`load_score_cache`).
        attributes: per row the ranked attribute phrases (None when ``cache/attributes.json`` is absent).
        config: the run's resolved :class:`RunConfig` (defaults when ``config.yaml`` is absent).
    """

    video_ids: list[str]
    labels: np.ndarray
    video_scores: np.ndarray
    classes: list[str]
    split: str = "val"
    config_hash: str = ""
    score_kind: ScoreKind = "logits"
    attr_scores: Optional[np.ndarray] = None
    class_emb: Optional[np.ndarray] = None
    frame_emb: Optional[np.ndarray] = None
    view_scores: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)
    directory: Optional[Path] = None
    run_dir: Optional[Path] = None
    attributes: Optional[list[list[str]]] = None
    manifest: dict = field(default_factory=dict)
    config: RunConfig = field(default_factory=RunConfig)

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    @property
    def max_attributes(self) -> int:
        """Largest k the cached rankings allow (the longest phrase list)."""
        if not self.attributes:
            return 0
        return max(len(p) for p in self.attributes)

    def rows(self, rows: np.ndarray | Sequence[int]) -> "ScoreCache":
        """The cache restricted to (and reordered by) ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        take = lambda a: None if a is None else np.asarray(a[rows])  # noqa: E731
        return replace(
            self,
            video_ids=[self.video_ids[i] for i in rows],
            labels=take(self.labels),
            video_scores=take(self.video_scores),
            attr_scores=take(self.attr_scores),
            frame_emb=take(self.frame_emb),
            view_scores=take(self.view_scores),
            attributes=None if self.attributes is None else [self.attributes[i] for i in rows],
        )

    def select_ids(self, ids: Sequence[str]) -> "ScoreCache":
        """The cache in the order of ``ids`` (every id must be present)."""
        index = {v: i for i, v in enumerate(self.video_ids)}
        missing = [v for v in ids if v not in index]
        if missing:
            raise KeyError(f"{self.directory or 'cache'}: {len(missing)} video id(s) not cached, e.g. {missing[0]!r}")
        return self.rows([index[v] for v in ids])


# ------------------------------------------------------------------------------ write and read
def write_cache(
    directory: str | Path,
    *,
    video_ids: Sequence[str],
    labels: np.ndarray,
    video_scores: np.ndarray,
    classes: Sequence[str],
    split: str,
    config_hash: str,
    score_kind: ScoreKind = "logits",
    attr_scores: Optional[np.ndarray] = None,
    class_emb: Optional[np.ndarray] = None,
    frame_emb: Optional[np.ndarray] = None,
    view_scores: Optional[np.ndarray] = None,
    extra: Optional[dict] = None,
) -> Path:
    """Write one split's cache (arrays first, manifest last). Returns the directory."""
    directory = Path(directory)
    n, k = len(video_ids), len(classes)
    if len(set(video_ids)) != n:
        raise ValueError(f"{directory}: video ids are not unique")
    arrays = {
        "video_scores": video_scores,
        "attr_scores": attr_scores,
        "labels": labels,
        "class_emb": class_emb,
        "frame_emb": frame_emb,
        "view_scores": view_scores,
    }
    manifest: dict = {
        "format": CACHE_FORMAT_VERSION,
        "split": split,
        "config_hash": config_hash,
        "classes": list(classes),
        "num_videos": n,
        "num_classes": k,
        "score_kind": score_kind,
        "arrays": {},
        "extra": dict(extra or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        fname, dtype = _ARRAYS[name]
        if arr is None:
            (directory / fname).unlink(missing_ok=True)
            continue
        arr = np.ascontiguousarray(np.asarray(arr), dtype=dtype)
        shape_ok = {
            "video_scores": arr.shape == (n, k),
            "attr_scores": arr.shape == (n, k),
            "labels": arr.shape in ((n,), (n, k)),
            "class_emb": arr.ndim == 2 and arr.shape[0] == k,
            "frame_emb": arr.ndim == 3 and arr.shape[0] == n,
            "view_scores": arr.ndim == 3 and arr.shape[0] == n and arr.shape[2] == k,
        }[name]
        if not shape_ok:
            raise ValueError(f"{directory / fname}: shape {arr.shape} does not fit N={n} videos and K={k} classes")
        atomic_write_npy(directory / fname, arr)
        manifest["arrays"][name] = {"file": fname, "shape": list(arr.shape), "dtype": str(arr.dtype)}
    atomic_write_text(directory / VIDEO_IDS_FILE, json.dumps(list(map(str, video_ids))))
    atomic_write_json(directory / MANIFEST, manifest)
    return directory


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: not valid JSON: {exc}") from None


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise CacheError(f"{path}: file not found") from None
    except ValueError as exc:
        raise CacheError(f"{path}: not a readable .npy array: {exc}") from None


def read_cache(directory: str | Path, mmap: bool = True) -> ScoreCache:
    """Read a cache written by :func:`write_cache`, checking every array against the ids, the classes and the manifest.

    Raises FileNotFoundError without a manifest (an unfinished evaluation), else :class:`CacheError`
    naming the file.
    """
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no cache manifest (was the evaluation finished?)")
    manifest = _load_json(mpath)
    ids = _load_json(directory / VIDEO_IDS_FILE)
    if not isinstance(ids, list):
        raise CacheError(f"{directory / VIDEO_IDS_FILE}: expected a list of video ids")
    ids = [str(v) for v in ids]
    n = len(ids)
    if n != manifest.get("num_videos", n):
        raise CacheError(f"{directory / VIDEO_IDS_FILE}: {n} ids, manifest says {manifest['num_videos']}")
    if len(set(ids)) != n:
        raise CacheError(f"{directory / VIDEO_IDS_FILE}: video ids are not unique")
    classes = [str(c) for c in manifest.get("classes", [])]
    loaded: dict[str, Optional[np.ndarray]] = {name: None for name in _ARRAYS}
    for name, info in manifest.get("arrays", {}).items():
        path = directory / info.get("file", f"{name}.npy")
        arr = _load_npy(path, mmap)
        if name in _PER_VIDEO and (arr.ndim == 0 or arr.shape[0] != n):
            what = f"{arr.shape[0]} labels" if name == "labels" and arr.ndim else f"shape {arr.shape}"
            raise CacheError(f"{path}: {what} for {n} video ids (one row per id)")
        if list(arr.shape) != info.get("shape", list(arr.shape)) or str(arr.dtype) != info.get("dtype", str(arr.dtype)):
            raise CacheError(
                f"{path}: shape {list(arr.shape)} dtype {arr.dtype} differ from the manifest ({info['shape']} {info['dtype']})"
            )
        loaded[name] = arr
    if loaded["video_scores"] is None or loaded["labels"] is None:
        raise CacheError(f"{mpath}: a cache needs video_scores and labels")
    scores = loaded["video_scores"]
    if scores.ndim != 2:
        raise CacheError(f"{directory / _ARRAYS['video_scores'][0]}: shape {scores.shape}; expected [{n}, K] (one row per id)")
    if len(classes) != scores.shape[1]:
        raise CacheError(f"{mpath}: {len(classes)} classes listed for {scores.shape[1]} score columns")
    if loaded["attr_scores"] is not None and loaded["attr_scores"].shape != scores.shape:
        raise CacheError(f"{directory / _ARRAYS['attr_scores'][0]}: shape {loaded['attr_scores'].shape}; expected {scores.shape}")
    return ScoreCache(
        video_ids=ids,
        labels=np.asarray(loaded["labels"]),
        video_scores=scores,
        classes=classes,
        split=str(manifest.get("split", directory.name)),
        config_hash=str(manifest.get("config_hash", "")),
        score_kind=manifest.get("score_kind", "logits"),
        attr_scores=loaded["attr_scores"],
        class_emb=loaded["class_emb"],
        frame_emb=loaded["frame_emb"],
        view_scores=loaded["view_scores"],
        extra=manifest.get("extra", {}),
        directory=directory,
        manifest=manifest,
    )


# ------------------------------------------------------------------------------ a run's caches
def cached_splits(run_dir: str | Path) -> list[str]:
    """The splits with a complete cache (a ``manifest.json``) under ``<run_dir>/cache/``."""
    root = cache_dir(run_dir)
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


def load_score_cache(run_dir: str | Path, split: Optional[str] = None, mmap: bool = False) -> ScoreCache:
    """One split's cache of a run (:func:`read_cache`), with the run's ranked phrases and config.

    ``<run_dir>/cache/attributes.json`` (when present) gives ``attributes`` (every video id of the
    split must have phrases); ``<run_dir>/config.yaml`` gives ``config``. ``split=None`` takes the only
    split cached.
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
    directory = split_cache_dir(run_dir, split)
    if split not in available:
        raise CacheError(
            f"{directory / MANIFEST}: no cache for split {split!r} (cached: {available or 'none'}); "
            f"evaluate that split first (eval.split={split}, or a training run with data.tuning_holdout > 0 for 'tune')"
        )
    cache = read_cache(directory, mmap=mmap)
    attributes = None
    attr_path = attributes_cache_path(run_dir)
    if attr_path.is_file():
        known = read_attributes_file(attr_path)
        missing = [v for v in cache.video_ids if v not in known]
        if missing:
            raise CacheError(
                f"{attr_path}: {len(missing)} of {cache.num_videos} video ids of split {split!r} have no attributes (first: {missing[:3]})"
            )
        attributes = [known[v] for v in cache.video_ids]
    config = RunConfig.from_yaml(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else RunConfig()
    return replace(cache, run_dir=run_dir, attributes=attributes, config=config)


def join_score_caches(video: ScoreCache, attrs: ScoreCache) -> ScoreCache:
    """Video scores from one run, attribute scores, phrases and config from another, joined by video id.

    Rows follow ``video``'s order; every id of ``video`` must be in ``attrs`` with the same label,
    and the class lists must agree. Never joins by row order.
    """
    if list(attrs.classes) != list(video.classes):
        raise CacheError(f"{attrs.directory / MANIFEST}: class list differs from {video.directory / MANIFEST}")
    pos = {v: i for i, v in enumerate(attrs.video_ids)}
    missing = [v for v in video.video_ids if v not in pos]
    if missing:
        raise CacheError(
            f"{attrs.directory / VIDEO_IDS_FILE}: {len(missing)} video ids of {video.directory} are absent (first: {missing[:3]})"
        )
    idx = np.array([pos[v] for v in video.video_ids], dtype=np.int64)
    differ = np.any((attrs.labels[idx] != video.labels).reshape(len(idx), -1), axis=1)
    if differ.any():
        bad = video.video_ids[int(np.flatnonzero(differ)[0])]
        raise CacheError(f"{attrs.directory / _ARRAYS['labels'][0]}: label of video {bad!r} differs from {video.directory}")
    return replace(
        video,
        attr_scores=None if attrs.attr_scores is None else np.asarray(attrs.attr_scores)[idx],
        attributes=None if attrs.attributes is None else [attrs.attributes[i] for i in idx],
        config=attrs.config,
    )


# ------------------------------------------------------------------------------ from the cache
def video_side_scores(cache: ScoreCache, view_aggregation: Optional[str] = None, temperature: float = 1.0) -> tuple[np.ndarray, ScoreKind]:
    """The video branch's per-video scores and their kind, re-aggregating views when asked.

    With ``view_aggregation`` (``softmax_mean`` | ``logit_mean``) and per-view scores in the cache,
    the views are combined again from ``view_scores``; otherwise the stored ``video_scores``.
    """
    if view_aggregation is None:
        return np.asarray(cache.video_scores, dtype=np.float64), cache.score_kind
    if cache.view_scores is None:
        if cache.score_kind == "logits" and cache.extra.get("views", 1) == 1:
            # one view: both aggregations are the logits themselves (softmax is the fusion transform)
            return np.asarray(cache.video_scores, dtype=np.float64), "logits"
        raise ValueError(f"{cache.directory}: no per-view scores cached; cannot re-aggregate views")
    agg = aggregate_views(np.asarray(cache.view_scores, dtype=np.float64), view_aggregation, temperature)
    return agg, ("probabilities" if view_aggregation == "softmax_mean" else "logits")


# ---------------------------------------------------------------------- class-subset protocols
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def column_subset(scores: np.ndarray) -> ScoreFn:
    """Scores of a class subset as a column subset of one full score matrix ``[N, K]``."""
    return lambda rows, cols: np.asarray(scores)[np.ix_(rows, cols)]


@dataclass
class SplitResult:
    """Per-split top-1/top-5 (percent) over class subsets, with mean and population std (ddof 0)."""

    top1: list[float]
    top5: list[float]
    videos: list[int]
    classes: list[int]

    @property
    def top1_mean(self) -> float:
        return float(np.mean(self.top1))

    @property
    def top1_std(self) -> float:
        return float(np.std(self.top1))

    @property
    def top5_mean(self) -> float:
        return float(np.nanmean(self.top5)) if not all(math.isnan(x) for x in self.top5) else math.nan

    @property
    def top5_std(self) -> float:
        return float(np.nanstd(self.top5)) if not all(math.isnan(x) for x in self.top5) else math.nan

    def metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_mean": self.top1_mean, f"{prefix}_std": self.top1_std,
               f"{prefix}_top5_mean": self.top5_mean, f"{prefix}_top5_std": self.top5_std}
        for i, v in enumerate(self.top1):
            out[f"{prefix}_split{i}"] = v
        return out


def evaluate_class_splits(
    labels: np.ndarray, splits: Sequence[Sequence[int]], score_fn: ScoreFn, ties: str = "lowest_index"
) -> SplitResult:
    """Accuracy on class subsets (zero-shot half-class splits, K600 splits).

    For each split: keep the videos whose label is in the split and classify them among the split's
    classes that have at least one such video (the official ``np.unique`` of the kept labels, which is
    the whole split when every class has videos). ``score_fn(rows, cols) -> [len(rows), len(cols)]``
    gives the scores of that subset. ``ties``: the tie rule of :func:`bike.metrics.topk_accuracy`.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError("class-subset protocols need single-label labels [N]")
    res = SplitResult([], [], [], [])
    for split in splits:
        split = np.asarray(split, dtype=np.int64)
        rows = np.nonzero(np.isin(y, split))[0]
        if len(rows) == 0:
            raise ValueError(f"class split {split.tolist()[:5]}...: no video has a label in it")
        cols = np.unique(y[rows])
        new_labels = np.searchsorted(cols, y[rows])
        scores = score_fn(rows, cols)
        acc = topk_accuracy(scores, new_labels, ks=(1, 5), ties=ties)
        res.top1.append(float(acc["top1"]))
        res.top5.append(float(acc["top5"]))
        res.videos.append(len(rows))
        res.classes.append(len(cols))
    return res


def half_class_accuracy(
    cache: ScoreCache, num_splits: int = 10, path: str = "frame", scale: float = 100.0, ties: str = "lowest_index"
) -> SplitResult:
    """Zero-shot half-class protocol from a cache (``bike.protocols.half_class_splits``).

    ``path="frame"`` (official UCF/HMDB/ANet zero-shot) recomputes the per-frame softmax over each
    split's classes from ``frame_emb`` and ``class_emb`` (exactly the authors' ``multi_split_test``);
    ``path="full"`` takes column subsets of the cached per-video scores.
    """
    from bike.protocols import half_class_splits

    splits = half_class_splits(cache.num_classes, num_splits)
    if path == "frame":
        if cache.frame_emb is None or cache.class_emb is None:
            raise ValueError(f"{cache.directory}: the frame-level path needs frame_emb and class_emb in the cache")
        from bike.engine.zero_shot import frame_level_scores_np

        fe, ce = cache.frame_emb, np.asarray(cache.class_emb)
        fn: ScoreFn = lambda rows, cols: frame_level_scores_np(np.asarray(fe[rows]), ce[cols], scale)  # noqa: E731
    else:
        fn = column_subset(np.asarray(cache.video_scores))
    return evaluate_class_splits(cache.labels, splits, fn, ties)
