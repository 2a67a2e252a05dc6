"""The tuning problem: :class:`FusionProblem` (everything a trial needs, cached across trials),
:class:`ProblemFactory` (builds it from a spec in any process) and the Optuna objective
(:func:`make_objective`).

Shapes: N videos, K classes.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from bike.config import RunConfig
from bike.engine.caches import (
    CONFIG_FILE,
    MANIFEST,
    CacheError,
    ScoreCache,
    attributes_cache_path,
    join_score_caches,
    load_score_cache,
)
from bike.fusion import DEFAULT_TRANSFORM, check_transform, combine
from harness.lambda_exact import CandidateFusion, LambdaCurve, exact_lambda_curve, transform_scores
from harness.tuning.sentences import AttributeScorer, EngineTextSideFactory, SentenceEmbeddingCache, TextSideFactory
from harness.tuning.spec import FloatRange, IntRange, SearchSpace, SweepSpec, SweepSpecError

#: Largest |recomputed − cached| attribute score tolerated silently at the source run's own k.
ATTR_CONSISTENCY_TOL = 1e-3


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
        default_transform: str = DEFAULT_TRANSFORM,
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
            try:
                check_transform(t, self.cache.score_kind)  # type: ignore[arg-type]
            except ValueError as exc:
                raise CacheError(f"{self.cache.directory / MANIFEST}: {exc}") from None
            s_v = np.asarray(self.cache.video_scores)[self.keep]
            self._video[t] = transform_scores(s_v, t, self.cache.score_kind)  # type: ignore[arg-type]
        return self._video[t]

    def fused(self, lam: float, k: Optional[int] = None, transform: Optional[str] = None) -> np.ndarray:
        """``λ·T(S_V) + (1 − λ)·T(S_A(k))`` ``[N, K]`` float64 (Eq. 4, ``bike.fusion.combine``)."""
        return combine(self.video_side(transform), self.attr_side(k, transform), lam)

    def attr_scores(self, k: Optional[int]) -> np.ndarray:
        """``[N, K]`` raw attribute scores for ``k`` attributes (cached scores when ``k`` is None)."""
        if k is None:
            return np.asarray(self.cache.attr_scores)[self.keep]
        if self.scorer is None:
            raise ValueError("k was given but the problem has no attribute phrases/encoder to re-score with")
        return self.scorer.scores(k)[self.keep]

    def attr_side(self, k: Optional[int], transform: Optional[str] = None) -> np.ndarray:
        """``T(S_A(k))`` ``[N, K]`` float64. The cached scores are of the kind the manifest's
        ``extra.attr_score_kind`` says (an imported cache of the released files: ``probabilities``,
        already the softmax side); recomputed scores are logits."""
        kind = self.cache.extra.get("attr_score_kind", "logits") if k is None else "logits"
        t = self._transform(transform)
        try:
            check_transform(t, kind)
        except ValueError as exc:
            raise CacheError(f"{self.cache.directory / MANIFEST}: attribute scores: {exc}") from None
        return transform_scores(self.attr_scores(k), t, kind)  # type: ignore[arg-type]

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


# ============================================================================== building a problem
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
        config = RunConfig.from_yaml(run / CONFIG_FILE) if (run / CONFIG_FILE).is_file() else RunConfig()
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
                    f"{attributes_cache_path(cache.run_dir)}: missing, so space.k cannot be searched; set space.k: null"
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
