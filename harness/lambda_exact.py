"""Exact accuracy as a function of the fusion weight λ, instead of sampling λ.

Fusion (Eq. 4) is ``S(λ) = λ·T(S_V) + (1 − λ)·T(S_A)`` with ``T`` the score transform (softmax over
classes at temperature 1 for the ``official`` profile, identity for the paper's ``cosine``). With the
transformed scores ``a = T(S_V)[i]`` and ``b = T(S_A)[i]`` of video ``i`` fixed, every class's fused
score is a line in λ: ``f_k(λ) = λ·a_k + (1 − λ)·b_k``. The true class ``y`` is the top-1 exactly on
the set where ``f_y`` beats every other line, an intersection of half-lines, hence one interval
``[lo, hi] ∩ [0, 1]`` (possibly empty, possibly open at an end). Accuracy(λ) is then a step function
obtained by sweeping the interval endpoints of all videos.

Tie rule (the one ``np.argmax`` uses, and so the one evaluation's top-1 uses): on equal fused scores
the lowest class index wins. So the true class ``y`` must be strictly above every class ``k < y`` and
at least equal to every class ``k > y``; the interval ends are open or closed accordingly, and the
curve carries a value on every open interval between breakpoints *and* a value at every breakpoint.

The same envelope geometry gives :class:`CandidateFusion`, a fast path for *sampled* λ: the argmax of
a convex combination of two score vectors is always a class on the upper envelope of the K lines over
[0, 1], so after a one-off pass that finds those few candidate classes per video a trial only touches
``N × (a few)`` entries instead of ``N × K``.

Shapes: N videos, K classes, M open intervals (M + 1 breakpoints).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from bike.fusion import CHUNK_ELEMENTS, DEFAULT_TRANSFORM, ScoreKind, score_transform

Transform = Optional[Literal["softmax", "cosine", "none"]]
Metric = Literal["top1", "mean_class"]

#: Number of [rows × K] float64 elements processed per chunk (as bike.fusion's softmax: the
#: temporaries stay in cache, which on 2 cores is ~2× faster than whole-matrix passes).
DEFAULT_CHUNK_ELEMENTS = CHUNK_ELEMENTS


# ---------------------------------------------------------------------------------------------- inputs
def transform_scores(scores: np.ndarray, transform: Transform = DEFAULT_TRANSFORM, score_kind: ScoreKind = "logits") -> np.ndarray:
    """``T(scores)`` in float64 through :func:`bike.fusion.score_transform` (the fusion every path uses).

    Args:
        scores: ``[N, K]`` raw (unscaled cosine-like) scores of one branch, finite.
        transform: ``"softmax"`` (softmax over classes at temperature 1, official code); ``"cosine"``,
            ``"none"`` or ``None``: identity (the paper's formula on cosine scores, or sides already transformed).
        score_kind: ``"logits"`` or view-averaged ``"probabilities"`` (already the softmax side).
    """
    x = np.asarray(scores)
    if x.ndim != 2:
        raise ValueError(f"scores must be [N, K]; got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores contain NaN or infinite values")
    if transform not in ("softmax", "cosine", "none", None):
        raise ValueError(f"transform: got {transform!r}; expected 'softmax', 'cosine', 'none' or None")
    return score_transform(x, "cosine" if transform in ("none", None) else transform, score_kind=score_kind, dtype=np.float64)


def _check_inputs(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if a.shape != b.shape:
        raise ValueError(f"video and attribute scores differ in shape: {a.shape} vs {b.shape}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"labels must be [N] class indices; got shape {labels.shape} "
            "(multi-label targets have no single true class; exact λ curves support top-1 and mean class accuracy only)"
        )
    if labels.shape[0] != a.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {a.shape[0]} score rows")
    if a.shape[0] == 0:
        raise ValueError("no videos to evaluate")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= a.shape[1]:
        raise ValueError(f"labels must lie in [0, {a.shape[1] - 1}]; got range [{labels.min()}, {labels.max()}]")
    return labels


def metric_weights(labels: np.ndarray, metric: Metric) -> np.ndarray:
    """Per-video weights whose sum over correct videos is the metric: ``[N]``.

    ``top1``: 1/N each. ``mean_class``: the mean over the classes present in ``labels`` of the
    per-class accuracy, i.e. ``1 / (C_present · n_y)`` for a video of class ``y``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    if metric == "top1":
        return np.full(n, 1.0 / n)
    if metric == "mean_class":
        counts = np.bincount(labels)
        present = int(np.count_nonzero(counts))
        return 1.0 / (present * counts[labels].astype(np.float64))
    raise ValueError(f"metric: got {metric!r}; expected 'top1' or 'mean_class'")


# ------------------------------------------------------------------------------------- per-video sets
@dataclass(frozen=True)
class TrueClassIntervals:
    """Per video, the λ-set on which the true class is the top-1: ``[N]`` arrays.

    The set is ``{lo ≤ λ ≤ hi}`` with ``<`` instead of ``≤`` at an end whose ``*_open`` flag is set;
    ``empty`` marks videos never classified correctly for any λ in [0, 1].
    """

    lo: np.ndarray
    hi: np.ndarray
    lo_open: np.ndarray
    hi_open: np.ndarray
    empty: np.ndarray

    def contains(self, lam: float) -> np.ndarray:
        """``[N]`` bool: is the true class the top-1 at this λ."""
        above = np.where(self.lo_open, self.lo < lam, self.lo <= lam)
        below = np.where(self.hi_open, lam < self.hi, lam <= self.hi)
        return ~self.empty & above & below


def true_class_intervals(
    a: np.ndarray, b: np.ndarray, labels: np.ndarray, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> TrueClassIntervals:
    """The λ-interval of each video on which its true class wins (vectorised, chunked over videos).

    Args:
        a: ``[N, K]`` transformed video-branch scores (the coefficient of λ).
        b: ``[N, K]`` transformed attribute-branch scores (the coefficient of 1 − λ).
        labels: ``[N]`` true class indices.
        chunk_elements: rows per chunk = ``chunk_elements // K``.

    For class ``k`` the margin ``g_k(λ) = f_y(λ) − f_k(λ) = (1 − λ)·c_k + λ·e_k`` with
    ``c_k = b_y − b_k`` and ``e_k = a_y − a_k``. It must be ``> 0`` for ``k < y`` and ``≥ 0`` for
    ``k > y`` (lowest index wins ties). A decreasing margin bounds λ from above at its root
    ``c_k / (c_k − e_k)``, an increasing one from below; a constant one either always holds or never.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    labels = _check_inputs(a, b, labels)
    n, k = a.shape
    lo = np.empty(n)
    hi = np.empty(n)
    lo_open = np.empty(n, dtype=bool)
    hi_open = np.empty(n, dtype=bool)
    never = np.empty(n, dtype=bool)
    cols = np.arange(k)
    rows_per_chunk = max(1, chunk_elements // k)
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, n, rows_per_chunk):
            sl = slice(start, min(n, start + rows_per_chunk))
            ac, bc, y = a[sl], b[sl], labels[sl]
            r = np.arange(ac.shape[0])
            c = bc[r, y][:, None] - bc  # margin at λ = 0
            d = c - (ac[r, y][:, None] - ac)  # c − e: > 0 decreasing margin, < 0 increasing
            strict = cols[None, :] < y[:, None]  # classes that win ties against y
            root = c / d
            dec = d > 0
            inc = d < 0
            upper = np.where(dec, root, np.inf)
            lower = np.where(inc, root, -np.inf)
            h = upper.min(axis=1)
            l_ = lower.max(axis=1)
            hi[sl] = h
            lo[sl] = l_
            hi_open[sl] = np.any(dec & strict & (upper == h[:, None]), axis=1)
            lo_open[sl] = np.any(inc & strict & (lower == l_[:, None]), axis=1)
            const = d == 0
            never[sl] = np.any(const & ((c < 0) | ((c == 0) & strict)), axis=1)
    # Clip to [0, 1]: a bound outside the range is replaced by the (closed) range end.
    below0 = lo < 0.0
    lo[below0] = 0.0
    lo_open[below0] = False
    above1 = hi > 1.0
    hi[above1] = 1.0
    hi_open[above1] = False
    empty = never | (lo > hi) | ((lo == hi) & (lo_open | hi_open))
    return TrueClassIntervals(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, empty=empty)


# ------------------------------------------------------------------------------------------- the curve
@dataclass(frozen=True)
class LambdaCurve:
    """Accuracy as an exact step function of λ on [0, 1].

    Attributes:
        breakpoints: ``[M + 1]`` sorted, ``breakpoints[0] == 0``, ``breakpoints[-1] == 1``.
        values: ``[M]`` the metric on each open interval ``(breakpoints[j], breakpoints[j + 1])``.
        point_values: ``[M + 1]`` the metric exactly at each breakpoint (ties decided by the
            lowest-index rule; may differ from both neighbouring intervals).
        metric: ``"top1"`` or ``"mean_class"``.
        transform: the score transform the curve was computed under.
        n: number of videos.
    """

    breakpoints: np.ndarray
    values: np.ndarray
    point_values: np.ndarray
    metric: str = "top1"
    transform: Optional[str] = DEFAULT_TRANSFORM
    n: int = 0
    #: Values within this of the maximum count as optimal (float sums of per-video weights).
    tol: float = field(default=1e-12, repr=False)

    def at(self, lams: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """The metric at each λ: the point value on a breakpoint, the interval value elsewhere."""
        lam = np.atleast_1d(np.asarray(lams, dtype=np.float64))
        if np.any((lam < 0.0) | (lam > 1.0)) or not np.all(np.isfinite(lam)):
            raise ValueError("λ must lie in [0, 1]")
        p = self.breakpoints
        j = np.searchsorted(p, lam, side="right") - 1  # p[j] <= λ < p[j + 1]
        on_point = p[j] == lam
        seg = np.minimum(j, len(self.values) - 1)
        return np.where(on_point, self.point_values[j], self.values[seg])

    def best(self) -> tuple[float, float, float]:
        """The optimum interval ``(lo, hi, value)``.

        The maximum is taken over the open intervals (a value reached only at an isolated breakpoint
        hangs on an exact tie and is not robust). Adjacent optimal intervals are merged through a
        breakpoint whose own value is also optimal; among several optimal runs the widest is returned
        (the first on equal width). Report ``(lo + hi) / 2`` as the tuned λ (:attr:`best_lambda`).
        """
        v = self.values
        vmax = float(v.max())
        good = v >= vmax - self.tol
        best_run: tuple[int, int] | None = None
        j = 0
        m = len(v)
        p = self.breakpoints
        while j < m:
            if not good[j]:
                j += 1
                continue
            start = j
            while j + 1 < m and good[j + 1] and self.point_values[j + 1] >= vmax - self.tol:
                j += 1
            if best_run is None or p[j + 1] - p[start] > p[best_run[1] + 1] - p[best_run[0]]:
                best_run = (start, j)
            j += 1
        assert best_run is not None
        return float(p[best_run[0]]), float(p[best_run[1] + 1]), vmax

    @property
    def best_lambda(self) -> float:
        """Midpoint of :meth:`best`'s interval."""
        lo, hi, _ = self.best()
        return 0.5 * (lo + hi)

    def to_dict(self) -> dict:
        """JSON-ready summary (the full step function plus the optimum)."""
        lo, hi, value = self.best()
        return {
            "metric": self.metric,
            "transform": self.transform,
            "n": self.n,
            "best_lambda": 0.5 * (lo + hi),
            "best_interval": [lo, hi],
            "best_value": value,
            "breakpoints": self.breakpoints.tolist(),
            "values": self.values.tolist(),
            "point_values": self.point_values.tolist(),
        }

    def plot(self, path: str | Path, title: Optional[str] = None, mark: Optional[float] = None) -> Path:
        """Save a PNG of the metric against λ (matplotlib Agg canvas; no pyplot, no display).

        Args:
            path: output file (parents are created).
            title: figure title (default names the metric and the transform).
            mark: an extra λ to mark with a dashed line (e.g. the configured default 0.6).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(6.4, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.stairs(100.0 * self.values, self.breakpoints, baseline=None, color="C0", linewidth=1.2, label=self.metric)
        lo, hi, value = self.best()
        ax.axvspan(lo, hi, color="C2", alpha=0.25, label=f"best {100 * value:.2f} on [{lo:.4f}, {hi:.4f}]")
        ax.axvline(0.5 * (lo + hi), color="C2", linewidth=1.0)
        if mark is not None:
            ax.axvline(mark, color="C3", linestyle="--", linewidth=1.0, label=f"λ = {mark:g}: {100 * self.at(mark)[0]:.2f}")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("λ (weight of the video branch)")
        ax.set_ylabel(f"{self.metric} (%)")
        ax.set_title(title or f"exact {self.metric} vs λ (transform: {self.transform}, N = {self.n})")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower center", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        return path


def curve_from_intervals(
    iv: TrueClassIntervals,
    weights: Optional[np.ndarray] = None,
    metric: str = "top1",
    transform: Optional[str] = None,
) -> LambdaCurve:
    """Sweep interval endpoints into a :class:`LambdaCurve` (+w at ``lo``, −w after ``hi``).

    Args:
        iv: per-video intervals (``[N]``).
        weights: ``[N]`` per-video weights (see :func:`metric_weights`); ``None`` counts videos
            exactly (integers) and divides by N — top-1 without summation noise.
    """
    ok = ~iv.empty
    lo, hi = iv.lo[ok], iv.hi[ok]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[ok]
    p = np.unique(np.concatenate([lo, hi, [0.0, 1.0]]))
    m = len(p) - 1
    i_lo = np.searchsorted(p, lo)
    i_hi = np.searchsorted(p, hi)
    # Open intervals: video covers (p_j, p_j+1) iff i_lo <= j < i_hi.
    seg = np.bincount(i_lo, weights=w, minlength=m + 1) - np.bincount(i_hi, weights=w, minlength=m + 1)
    values = np.cumsum(seg)[:m]
    # Points: video contains p_j iff start <= j < end.
    start = i_lo + iv.lo_open[ok]
    end = i_hi + 1 - iv.hi_open[ok]
    pts = np.bincount(start, weights=w, minlength=m + 2) - np.bincount(end, weights=w, minlength=m + 2)
    point_values = np.cumsum(pts)[: m + 1]
    if w is None:  # counts: exact integers, then the fraction of videos
        values = values / iv.lo.shape[0]
        point_values = point_values / iv.lo.shape[0]
    else:  # clean the cumulative-sum noise (values are sums of non-negative weights)
        values = np.maximum(values, 0.0)
        point_values = np.maximum(point_values, 0.0)
    return LambdaCurve(
        breakpoints=p,
        values=values,
        point_values=point_values,
        metric=metric,
        transform=transform,
        n=int(iv.lo.shape[0]),
    )


def exact_lambda_curve(
    s_v: np.ndarray,
    s_a: np.ndarray,
    labels: np.ndarray,
    transform: Transform = DEFAULT_TRANSFORM,
    metric: Metric = "top1",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> LambdaCurve:
    """The exact step function metric(λ) of ``λ·T(s_v) + (1 − λ)·T(s_a)`` over λ ∈ [0, 1].

    Args:
        s_v: ``[N, K]`` raw video-branch scores.
        s_a: ``[N, K]`` raw attribute-branch scores.
        labels: ``[N]`` true class indices.
        transform: score transform ``T`` (``"softmax"``, ``"cosine"``/``"none"``/``None`` = identity).
        metric: ``"top1"`` or ``"mean_class"``.

    Returns:
        :class:`LambdaCurve`; ``curve.best()`` is the optimal interval, ``curve.at(λ)`` evaluates.
    """
    a = transform_scores(s_v, transform)
    b = transform_scores(s_a, transform)
    labels = _check_inputs(a, b, labels)
    iv = true_class_intervals(a, b, labels, chunk_elements=chunk_elements)
    weights = None if metric == "top1" else metric_weights(labels, metric)
    return curve_from_intervals(iv, weights, metric=metric, transform=transform)


# ------------------------------------------------------------------------------- fast sampled-λ trials
def fused_top1_full(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """Reference: ``argmax_k(λ·a + (1 − λ)·b)`` on the full matrices, ``[N]`` class indices.

    Arithmetic in the dtype of ``a`` (λ is cast to it), lowest index on ties (``np.argmax``).
    """
    lam_t = a.dtype.type(lam)
    fused = lam_t * a + (a.dtype.type(1) - lam_t) * b
    return fused.argmax(axis=1)


def envelope_vertices(a: np.ndarray, b: np.ndarray, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> np.ndarray:
    """λ-positions where the top-1 class changes, per video (the upper envelope's vertices).

    Walks the envelope of the lines ``f_k(λ) = b_k + λ·(a_k − b_k)`` from λ = 0: from the current
    line, the next one is the steeper line it meets first (the steepest of those meeting there).
    Vectorised over videos; the number of steps is the largest number of envelope segments of any
    video in a chunk.

    Args:
        a, b: ``[N, K]`` transformed scores.

    Returns:
        ``[N, S]`` sorted λ per video: column 0 is 0, then the interior vertices, then 1 repeated to
        pad the row.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n, k = a.shape
    chunks: list[np.ndarray] = []
    rows_per_chunk = max(1, chunk_elements // k)
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, n, rows_per_chunk):
            bc = b[start : start + rows_per_chunk]
            slope = a[start : start + rows_per_chunk] - bc
            m = bc.shape[0]
            # Start at λ = 0 on the highest line, the steepest among equals.
            top = bc.max(axis=1)
            cur = np.where(bc == top[:, None], slope, -np.inf).argmax(axis=1)
            lam_cur = np.zeros(m)
            columns = [np.zeros(m)]
            active = np.arange(m)
            while active.size:
                s = slope[active]
                bb = bc[active]
                r = np.arange(active.size)
                c_act = cur[active]
                s_cur = s[r, c_act][:, None]
                steeper = s > s_cur
                cross = np.where(steeper, (bb[r, c_act][:, None] - bb) / (s - s_cur), np.inf)
                t = np.maximum(cross.min(axis=1), lam_cur[active])
                go = t < 1.0
                nxt = np.where(cross == t[:, None], s, -np.inf).argmax(axis=1)
                col = np.ones(m)
                col[active[go]] = t[go]
                columns.append(col)
                cur[active[go]] = nxt[go]
                lam_cur[active[go]] = t[go]
                active = active[go]
            chunks.append(np.stack(columns, axis=1))
    width = max(c.shape[1] for c in chunks)
    return np.concatenate([np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values=1.0) for c in chunks])


@dataclass(frozen=True)
class _Bucket:
    """Videos with the same number C of candidate classes, the true class among them; column-major.

    A video is correct at λ when its true class's fused score is strictly above every candidate of
    lower class index and at least equal to every candidate of higher index (``np.argmax``'s first
    maximum). The two sides are selected by adding ``0`` or ``−inf`` penalties (exact in floating
    point), so a trial is a few vectorised passes without branches or fancy indexing.

    Attributes:
        a, b: ``[C, R]`` candidate scores (row c = the c-th candidate, in ascending class order).
        pen_before, pen_after: ``[C, R]`` 0 where the candidate's class index is below (above) the
            true class, −inf elsewhere.
        la, lb: ``[R]`` the true class's scores.
        rows: ``[R]`` the videos' rows in the original order.
    """

    a: np.ndarray
    b: np.ndarray
    pen_before: np.ndarray
    pen_after: np.ndarray
    la: np.ndarray
    lb: np.ndarray
    rows: np.ndarray

    def hits(self, lam: float) -> np.ndarray:
        """``[R]`` bool: the true class is the fused argmax at ``lam``."""
        lam_t = self.a.dtype.type(lam)
        mu = self.a.dtype.type(1) - lam_t
        fused = lam_t * self.a + mu * self.b  # [C, R], the same arithmetic as the full matrix
        true = lam_t * self.la + mu * self.lb  # [R]
        return (true > (fused + self.pen_before).max(axis=0)) & (true >= (fused + self.pen_after).max(axis=0))


@dataclass(frozen=True)
class CandidateFusion:
    """Fused top-1 at any λ from a few candidate classes per video (equal to the full computation).

    Built once by :meth:`from_scores`; a trial (:meth:`correct`, :meth:`top1`, :meth:`accuracy`) then
    computes ``λ·a + (1 − λ)·b`` in the working dtype only on the candidate columns, in ascending
    class order, and keeps the first maximum, so it picks the class ``np.argmax`` picks on the full
    matrix (lowest index on ties).

    A class is a candidate when its line comes within ``tol`` of the envelope at one of the envelope's
    vertices (the gap between a line and the convex envelope is smallest at a vertex), with ``tol``
    far above the rounding of the fused sum: every class that can win at any λ — ties included — is
    kept. Videos with a single candidate, or whose true class is no candidate, have a constant
    outcome and are not recomputed per trial; the others are grouped by candidate count (exact counts
    up to ``max_exact_width``, then one padded group) so that a trial does no work on padding for the
    common 2- and 3-candidate videos.

    Attributes:
        buckets: the groups of videos recomputed per trial.
        const_correct: ``[N]`` bool, correct for every λ (one candidate, which is the label).
        labels: ``[N]``; mean_class_weights: ``[N]`` (see :func:`metric_weights`).
    """

    buckets: tuple[_Bucket, ...]
    const_correct: np.ndarray
    labels: np.ndarray
    n: int
    mean_class_weights: np.ndarray = field(repr=False)

    @classmethod
    def from_scores(
        cls,
        s_v: np.ndarray,
        s_a: np.ndarray,
        labels: np.ndarray,
        transform: Transform = DEFAULT_TRANSFORM,
        dtype: type = np.float32,
        rel_tol: float = 64.0,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> "CandidateFusion":
        """Transform both sides once, cast to ``dtype``, and keep each video's candidate classes.

        Args:
            s_v, s_a: ``[N, K]`` raw scores; labels: ``[N]``.
            transform: as in :func:`transform_scores`.
            dtype: working dtype of the trials (float32 by default).
            rel_tol: candidate tolerance in units of ``eps(dtype) · max|score|``.
        """
        a = transform_scores(s_v, transform).astype(dtype)
        b = transform_scores(s_a, transform).astype(dtype)
        return cls.from_transformed(a, b, labels, rel_tol=rel_tol, chunk_elements=chunk_elements)

    @classmethod
    def from_transformed(
        cls,
        a: np.ndarray,
        b: np.ndarray,
        labels: np.ndarray,
        rel_tol: float = 64.0,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        max_exact_width: int = 4,
    ) -> "CandidateFusion":
        """As :meth:`from_scores` on already transformed ``[N, K]`` scores in the working dtype."""
        labels = _check_inputs(a, b, labels)
        n, k = a.shape
        scale = float(max(np.abs(a).max(), np.abs(b).max(), np.finfo(np.float64).tiny))
        tol = rel_tol * float(np.finfo(a.dtype).eps) * scale
        verts = envelope_vertices(a, b, chunk_elements=chunk_elements)
        rows_per_chunk = max(1, chunk_elements // k)
        mask = np.zeros((n, k), dtype=bool)
        for start in range(0, n, rows_per_chunk):
            stop = min(n, start + rows_per_chunk)
            ac = a[start:stop].astype(np.float64)
            bc = b[start:stop].astype(np.float64)
            vmat = verts[start:stop]  # [m, S]
            m = mask[start:stop]
            for j in range(vmat.shape[1]):
                if j > 0 and np.all(vmat[:, j] == vmat[:, j - 1]):
                    continue  # padding columns (λ = 1 repeated)
                lam = vmat[:, j : j + 1]
                f = lam * ac + (1.0 - lam) * bc
                m |= f >= f.max(axis=1, keepdims=True) - tol
        sizes = mask.sum(axis=1)
        has_label = mask[np.arange(n), labels]
        const_correct = (sizes == 1) & has_label
        buckets = []
        varying = (sizes >= 2) & has_label  # a video whose label is no candidate is never correct
        groups = [(w, varying & (sizes == w)) for w in range(2, max_exact_width + 1)]
        groups.append((int(sizes.max()), varying & (sizes > max_exact_width)))
        for width, sel in groups:
            rows = np.flatnonzero(sel)
            if rows.size == 0:
                continue
            sub = mask[rows]
            # Candidate class indices in ascending order; padding slots (valid False) repeat the
            # first candidate and get −inf penalties on both sides, so they never count.
            order = np.argsort(~sub, axis=1, kind="stable")[:, :width]
            valid = np.take_along_axis(sub, order, axis=1)
            idx = np.where(valid, order, order[:, :1])
            y = labels[rows][:, None]
            pen_before = np.where(valid & (idx < y), 0.0, -np.inf).astype(a.dtype)
            pen_after = np.where(valid & (idx > y), 0.0, -np.inf).astype(a.dtype)
            buckets.append(
                _Bucket(
                    a=np.ascontiguousarray(np.take_along_axis(a[rows], idx, axis=1).T),
                    b=np.ascontiguousarray(np.take_along_axis(b[rows], idx, axis=1).T),
                    pen_before=np.ascontiguousarray(pen_before.T),
                    pen_after=np.ascontiguousarray(pen_after.T),
                    la=a[rows, labels[rows]],
                    lb=b[rows, labels[rows]],
                    rows=rows,
                )
            )
        return cls(
            buckets=tuple(buckets),
            const_correct=const_correct,
            labels=labels,
            n=n,
            mean_class_weights=metric_weights(labels, "mean_class"),
        )

    @property
    def width(self) -> int:
        """The largest number of candidate classes of any video (1 when every outcome is constant)."""
        return max((bk.a.shape[0] for bk in self.buckets), default=1)

    @property
    def n_recomputed(self) -> int:
        """Videos whose outcome may depend on λ (recomputed per trial)."""
        return int(sum(bk.rows.size for bk in self.buckets))

    def correct(self, lam: float) -> np.ndarray:
        """``[N]`` bool: is the fused top-1 at ``lam`` the true class."""
        out = self.const_correct.copy()
        for bk in self.buckets:
            out[bk.rows] = bk.hits(lam)
        return out

    def top1(self, lam: float) -> float:
        """Fused top-1 accuracy at ``lam`` (fraction)."""
        hits = int(np.count_nonzero(self.const_correct))
        for bk in self.buckets:
            hits += int(np.count_nonzero(bk.hits(lam)))
        return hits / self.n

    def accuracy(self, lam: float, metric: Metric = "top1") -> float:
        """``top1`` or ``mean_class`` of the fused scores at ``lam``."""
        if metric == "top1":
            return self.top1(lam)
        if metric == "mean_class":
            return float(self.mean_class_weights[self.correct(lam)].sum())
        raise ValueError(f"metric: got {metric!r}; expected 'top1' or 'mean_class'")
