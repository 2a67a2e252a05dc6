"""Cached evaluation scores, and everything computed from them without running the network.

Layout, one directory per split (``<run_dir>/cache/<split>/``, e.g. ``cache/val/``, ``cache/tune/``)::

    video_scores.npy  [N, K] float32  video branch, unscaled (``score_kind`` says logits or view-averaged probabilities)
    attr_scores.npy   [N, K] float32  attributes branch (when enabled), unscaled logits
    labels.npy        [N] int64 or [N, K] int64 multi-hot
    video_ids.json    N ids, row order of every array
    class_emb.npy     [K, D] float32  category [CLS] embeddings (as the text tower gives them)
    frame_emb.npy     [N, T, D] float32  raw per-frame image features, mean over views (optional)
    view_scores.npy   [N, V, K] float16  per-view unscaled video logits (multi-view runs)
    manifest.json     shapes, dtypes, split, config hash, classes, score kind, views, ...

``manifest.json`` is written last, so a cache with a manifest is complete. Every file is written
atomically. Readers join caches of two runs by video id, never by row order.

From a cache: fusion (Eq. 4) at any λ, λ sweeps, view aggregation, class-subset protocols (zero-shot
half-class splits) — all without the network.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np

from bike.engine.checkpoint import atomic_write, atomic_write_json, atomic_write_text
from bike.metrics import aggregate_views, topk_accuracy

CACHE_DIR = "cache"
MANIFEST = "manifest.json"
ATTRIBUTES_FILE = "attributes.json"
CACHE_FORMAT_VERSION = 1

ScoreKind = Literal["logits", "probabilities"]

_ARRAYS = {
    "video_scores": ("video_scores.npy", np.float32),
    "attr_scores": ("attr_scores.npy", np.float32),
    "labels": ("labels.npy", np.int64),
    "class_emb": ("class_emb.npy", np.float32),
    "frame_emb": ("frame_emb.npy", np.float32),
    "view_scores": ("view_scores.npy", np.float16),
}


def split_cache_dir(run_dir: str | Path, split: str) -> Path:
    """``<run_dir>/cache/<split>``."""
    return Path(run_dir) / CACHE_DIR / split


def attributes_cache_path(run_dir: str | Path) -> Path:
    """``<run_dir>/cache/attributes.json`` (ranked attribute phrases per video id)."""
    return Path(run_dir) / CACHE_DIR / ATTRIBUTES_FILE


# ---------------------------------------------------------------------------------------- data
@dataclass
class ScoreCache:
    """One split's cached scores. Arrays may be read-only memory maps."""

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

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

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
        )

    def select_ids(self, ids: Sequence[str]) -> "ScoreCache":
        """The cache in the order of ``ids`` (every id must be present)."""
        index = {v: i for i, v in enumerate(self.video_ids)}
        missing = [v for v in ids if v not in index]
        if missing:
            raise KeyError(f"{self.directory or 'cache'}: {len(missing)} video id(s) not cached, e.g. {missing[0]!r}")
        return self.rows([index[v] for v in ids])


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
        atomic_write(directory / fname, lambda f, a=arr: np.save(f, a))
        manifest["arrays"][name] = {"file": fname, "shape": list(arr.shape), "dtype": str(arr.dtype)}
    atomic_write_text(directory / "video_ids.json", json.dumps(list(map(str, video_ids))))
    atomic_write_json(directory / MANIFEST, manifest)
    return directory


def read_cache(directory: str | Path, mmap: bool = True) -> ScoreCache:
    """Read a cache written by :func:`write_cache`, checking every array against the manifest."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no cache manifest (was the evaluation finished?)")
    manifest = json.loads(mpath.read_text())
    ids = json.loads((directory / "video_ids.json").read_text())
    if len(ids) != manifest["num_videos"]:
        raise ValueError(f"{directory / 'video_ids.json'}: {len(ids)} ids, manifest says {manifest['num_videos']}")
    loaded: dict[str, Optional[np.ndarray]] = {name: None for name in _ARRAYS}
    for name, info in manifest["arrays"].items():
        path = directory / info["file"]
        arr = np.load(path, mmap_mode="r" if mmap else None)
        if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
            raise ValueError(
                f"{path}: shape {list(arr.shape)} dtype {arr.dtype} differ from the manifest "
                f"({info['shape']} {info['dtype']})"
            )
        loaded[name] = arr
    if loaded["video_scores"] is None or loaded["labels"] is None:
        raise ValueError(f"{mpath}: a cache needs video_scores and labels")
    return ScoreCache(
        video_ids=ids,
        labels=np.asarray(loaded["labels"]),
        video_scores=loaded["video_scores"],
        classes=manifest["classes"],
        split=manifest["split"],
        config_hash=manifest["config_hash"],
        score_kind=manifest.get("score_kind", "logits"),
        attr_scores=loaded["attr_scores"],
        class_emb=loaded["class_emb"],
        frame_emb=loaded["frame_emb"],
        view_scores=loaded["view_scores"],
        extra=manifest.get("extra", {}),
        directory=directory,
    )


def join_caches(a: ScoreCache, b: ScoreCache) -> tuple[ScoreCache, ScoreCache]:
    """Align two caches on their common video ids (in ``a``'s order), checking classes and labels agree."""
    if list(a.classes) != list(b.classes):
        raise ValueError(f"cannot join caches {a.directory} and {b.directory}: their class lists differ")
    in_b = set(b.video_ids)
    common = [v for v in a.video_ids if v in in_b]
    if not common:
        raise ValueError(f"cannot join caches {a.directory} and {b.directory}: no video id in common")
    a2, b2 = a.select_ids(common), b.select_ids(common)
    if not np.array_equal(a2.labels, b2.labels):
        raise ValueError(f"caches {a.directory} and {b.directory} disagree on the labels of common videos")
    return a2, b2


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


def transform_side(scores: np.ndarray, kind: ScoreKind, transform: str) -> np.ndarray:
    """One side of Eq. 4 after the fusion transform.

    Logits go through ``bike.fusion.score_transform``. View-averaged probabilities (multi-view,
    ``softmax_mean``) already are the per-view softmax at temperature 1, the official transform, so
    ``softmax`` leaves them as they are; ``cosine`` cannot be applied to them.
    """
    if kind == "probabilities":
        if transform == "softmax":
            return np.asarray(scores, dtype=np.float64)
        raise ValueError(
            "fusion transform 'cosine' needs unscaled logits, but the cache holds view-averaged "
            "probabilities; re-aggregate with view_aggregation='logit_mean'"
        )
    from bike.fusion import score_transform

    import torch

    out = score_transform(torch.as_tensor(np.asarray(scores, dtype=np.float64)), transform)
    return out.detach().cpu().numpy().astype(np.float64) if hasattr(out, "detach") else np.asarray(out, dtype=np.float64)


def fuse_scores(
    s_v: np.ndarray, s_a: np.ndarray, lam: float, transform: str, kind_v: ScoreKind = "logits", kind_a: ScoreKind = "logits"
) -> np.ndarray:
    """S = λ·T(S_V) + (1 − λ)·T(S_A) (Eq. 4) on numpy arrays ``[N, K]``.

    For plain logits on both sides this equals ``bike.fusion.fuse(s_v, s_a, lam, transform)``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"fusion λ must lie in [0, 1], got {lam}")
    a = transform_side(s_v, kind_v, transform)
    b = transform_side(s_a, kind_a, transform)
    return lam * a + (1.0 - lam) * b


def fuse_cache(video: ScoreCache, attr: Optional[ScoreCache], lam: float, transform: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fused scores ``[N, K]`` from one cache (both branches) or two caches joined by video id.

    Returns (fused scores, labels, video ids).
    """
    if attr is None:
        if video.attr_scores is None:
            raise ValueError(f"{video.directory}: no attr_scores in the cache; pass the attributes run's cache")
        s_a, v = np.asarray(video.attr_scores), video
    else:
        v, a = join_caches(video, attr)
        if a.attr_scores is None:
            raise ValueError(f"{attr.directory}: no attr_scores in the cache")
        s_a = np.asarray(a.attr_scores)
    fused = fuse_scores(np.asarray(v.video_scores), s_a, lam, transform, kind_v=v.score_kind)
    return fused, v.labels, v.video_ids


def lambda_sweep(
    s_v: np.ndarray,
    s_a: np.ndarray,
    labels: np.ndarray,
    lams: Sequence[float],
    transform: str,
    kind_v: ScoreKind = "logits",
    kind_a: ScoreKind = "logits",
) -> np.ndarray:
    """Top-1 accuracy (percent) of the fused scores at every λ in ``lams`` → ``[len(lams)]``.

    The transforms are applied once; each λ costs one argmax over ``[N, K]``.
    """
    a = transform_side(s_v, kind_v, transform)
    b = transform_side(s_a, kind_a, transform)
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError("lambda_sweep needs single-label labels [N]")
    keep = y >= 0
    a, b, y = a[keep], b[keep], y[keep]
    diff = a - b
    out = np.empty(len(lams))
    for i, lam in enumerate(lams):
        fused = b + lam * diff  # = lam * a + (1 - lam) * b
        out[i] = float(topk_accuracy(fused, y, ks=(1,))["top1"])
    return out


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


def evaluate_class_splits(labels: np.ndarray, splits: Sequence[Sequence[int]], score_fn: ScoreFn) -> SplitResult:
    """Accuracy on class subsets (zero-shot half-class splits, K600 splits).

    For each split: keep the videos whose label is in the split and classify them among the split's
    classes that have at least one such video (the official ``np.unique`` of the kept labels, which is
    the whole split when every class has videos). ``score_fn(rows, cols) -> [len(rows), len(cols)]``
    gives the scores of that subset.
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
        acc = topk_accuracy(scores, new_labels, ks=(1, 5))
        res.top1.append(float(acc["top1"]))
        res.top5.append(float(acc["top5"]))
        res.videos.append(len(rows))
        res.classes.append(len(cols))
    return res


def half_class_accuracy(cache: ScoreCache, num_splits: int = 10, path: str = "frame", scale: float = 100.0) -> SplitResult:
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
    return evaluate_class_splits(cache.labels, splits, fn)
