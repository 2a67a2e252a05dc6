"""Tuning speed on a cached 20,000 × 400 score matrix (random, seeded).

Goals: a sampled-λ trial (fuse + top-1 over all videos) at ≥ 1,000 trials/s in-process; the exact
accuracy-vs-λ curve in < 2 s.

Run: ``python -m pytest -q benchmarks/test_bench_tuning.py --benchmark-enable --benchmark-only``
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from harness.lambda_exact import CandidateFusion, exact_lambda_curve, fused_top1_full, transform_scores

N, K = 20_000, 400


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw cosine-like scores ``[N, K]`` (float32, as cached) where both branches lean to the label."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, N)
    s_v = rng.normal(scale=1.0, size=(N, K)).astype(np.float32)
    s_a = rng.normal(scale=1.0, size=(N, K)).astype(np.float32)
    s_v[np.arange(N), labels] += 3.0 * rng.random(N).astype(np.float32)
    s_a[np.arange(N), labels] += 3.0 * rng.random(N).astype(np.float32)
    return s_v, s_a, labels


@pytest.fixture(scope="module")
def fast(scores) -> CandidateFusion:
    s_v, s_a, labels = scores
    f = CandidateFusion.from_scores(s_v, s_a, labels, transform="softmax")
    a = transform_scores(s_v).astype(np.float32)
    b = transform_scores(s_a).astype(np.float32)
    for lam in (0.0, 0.37, 0.6, 0.91, 1.0):  # the fast path is the full computation
        assert f.top1(lam) == (fused_top1_full(a, b, lam) == labels).mean()
    return f


def test_sampled_lambda_trial_candidates(benchmark, fast: CandidateFusion) -> None:
    """One sampled-λ trial: fused top-1 over all 20,000 videos via the envelope candidates."""
    lams = iter(np.random.default_rng(1).random(10_000_000))
    value = benchmark(lambda: fast.top1(next(lams)))
    assert 0.0 < value < 1.0
    benchmark.extra_info["candidate_columns"] = fast.width
    benchmark.extra_info["videos_recomputed"] = fast.n_recomputed
    benchmark.extra_info["trials_per_s"] = 1.0 / benchmark.stats.stats.mean


def test_sampled_lambda_trial_full_matrix(benchmark, scores) -> None:
    """Baseline: the same trial on the full softmaxed [N, K] float32 matrices."""
    s_v, s_a, labels = scores
    a = transform_scores(s_v).astype(np.float32)
    b = transform_scores(s_a).astype(np.float32)
    value = benchmark.pedantic(lambda: (fused_top1_full(a, b, 0.6) == labels).mean(), rounds=5, iterations=1)
    assert 0.0 < value < 1.0
    benchmark.extra_info["trials_per_s"] = 1.0 / benchmark.stats.stats.mean


def test_candidate_precompute(benchmark, scores) -> None:
    """One-off per (k, transform): softmax both sides and find each video's envelope candidates."""
    s_v, s_a, labels = scores
    f = benchmark.pedantic(lambda: CandidateFusion.from_scores(s_v, s_a, labels), rounds=2, iterations=1)
    assert f.width < 20


def test_exact_lambda_curve(benchmark, scores) -> None:
    """The exact top-1-vs-λ step function (softmax transform included)."""
    s_v, s_a, labels = scores
    curve = benchmark.pedantic(lambda: exact_lambda_curve(s_v, s_a, labels, transform="softmax"), rounds=3, iterations=1)
    lo, hi, value = curve.best()
    benchmark.extra_info["breakpoints"] = int(curve.breakpoints.size)
    benchmark.extra_info["best"] = [lo, hi, value]
    assert 0.0 <= lo < hi <= 1.0


def test_optuna_trials_end_to_end(benchmark, fast: CandidateFusion) -> None:
    """100 sampled-λ trials through Optuna (in-memory storage, random sampler): trial + Optuna overhead."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def run() -> float:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: fast.top1(t.suggest_float("lam", 0.0, 1.0)), n_trials=100)
        return study.best_value

    best = benchmark.pedantic(run, rounds=2, iterations=1)
    assert 0.0 < best < 1.0
    benchmark.extra_info["trials_per_s"] = 100.0 / benchmark.stats.stats.mean


def test_fused_cell_at_a_study_lambda(benchmark, scores) -> None:
    """`bikebench table6 --lambda-from`: one fused top-1 cell recomputed from a cached 20,000 × 400 split
    (both transforms + fusion + top-1; a cell costs two of these: the study's λ and the run's own)."""
    from pathlib import Path

    from harness.tuning import ScoreCache, fused_metric

    s_v, s_a, labels = scores
    cache = ScoreCache(run_dir=Path("."), directory=Path("."), split="val", video_scores=s_v, attr_scores=s_a,
                       labels=labels, video_ids=[str(i) for i in range(N)], classes=[str(k) for k in range(K)])
    value = benchmark.pedantic(lambda: fused_metric(cache, 0.6, "top1", "softmax"), rounds=3, iterations=1)
    a = transform_scores(s_v)
    b = transform_scores(s_a)
    assert value == pytest.approx(100.0 * (fused_top1_full(a, b, 0.6) == labels).mean(), abs=1e-9)
