"""Exact accuracy-vs-λ curves against brute force on a dense λ grid (np.argmax, lowest index on ties)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.lambda_exact import (
    CandidateFusion,
    LambdaCurve,
    exact_lambda_curve,
    fused_top1_full,
    metric_weights,
    transform_scores,
    true_class_intervals,
)

GRID = np.linspace(0.0, 1.0, 10_001)


def brute_force(a: np.ndarray, b: np.ndarray, labels: np.ndarray, lams: np.ndarray, metric: str = "top1") -> np.ndarray:
    """The metric at every λ of ``lams`` by fusing the full matrices and taking np.argmax."""
    w = metric_weights(labels, metric)
    out = np.empty(len(lams))
    for i, lam in enumerate(lams):
        correct = fused_top1_full(a, b, lam) == labels
        out[i] = correct.mean() if metric == "top1" else w[correct].sum()
    return out


def random_scores(n: int, k: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw scores where both branches favour the true class a little, with disagreements."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    s_v = rng.normal(size=(n, k))
    s_a = rng.normal(size=(n, k))
    s_v[np.arange(n), labels] += signal * rng.random(n)
    s_a[np.arange(n), labels] += signal * rng.random(n)
    return s_v, s_a, labels


def off_breakpoints(curve: LambdaCurve, lams: np.ndarray) -> np.ndarray:
    return ~np.isin(lams, curve.breakpoints)


@pytest.mark.parametrize("transform", ["softmax", "cosine"])
@pytest.mark.parametrize("metric", ["top1", "mean_class"])
def test_random_scores_match_dense_grid(transform: str, metric: str) -> None:
    s_v, s_a, labels = random_scores(n=300, k=12, seed=1)
    curve = exact_lambda_curve(s_v, s_a, labels, transform=transform, metric=metric)
    a, b = transform_scores(s_v, transform), transform_scores(s_a, transform)
    keep = off_breakpoints(curve, GRID)
    expected = brute_force(a, b, labels, GRID[keep], metric)
    np.testing.assert_allclose(curve.at(GRID[keep]), expected, rtol=0, atol=1e-12)
    # The curve is not flat: fusion matters on this data, so the comparison has teeth.
    assert curve.values.max() - curve.values.min() > 0.02
    assert len(curve.breakpoints) > 20


def test_integer_scores_with_ties_match_everywhere_including_dyadic_breakpoints() -> None:
    """Small-integer scores: many exact ties, duplicate classes, identical videos.

    On dyadic λ the fused sums are exact in floating point, so brute force decides ties exactly as
    the lowest-index rule says, and the curve's point values must agree there too.
    """
    rng = np.random.default_rng(7)
    n, k = 400, 6
    s_v = rng.integers(0, 4, size=(n, k)).astype(np.float64)
    s_a = rng.integers(0, 4, size=(n, k)).astype(np.float64)
    s_v[:, 5] = s_v[:, 2]  # a duplicate class: identical lines, tie for every λ
    s_a[:, 5] = s_a[:, 2]
    s_v[:50] = s_v[50:100]  # identical videos
    s_a[:50] = s_a[50:100]
    labels = rng.integers(0, k, n)
    labels[:20] = 5  # the duplicate's higher index never wins its ties
    curve = exact_lambda_curve(s_v, s_a, labels, transform=None)
    assert curve.values.max() > 0
    keep = off_breakpoints(curve, GRID)
    np.testing.assert_array_equal(curve.at(GRID[keep]), brute_force(s_v, s_a, labels, GRID[keep]))
    dyadic = np.array([0.0, 0.125, 0.25, 1 / 3, 0.5, 0.75, 1.0])
    on_bp = dyadic[np.isin(dyadic, curve.breakpoints) & (dyadic != 1 / 3)]
    assert {0.0, 0.5, 1.0} <= set(on_bp.tolist())
    np.testing.assert_array_equal(curve.at(on_bp), brute_force(s_v, s_a, labels, on_bp))
    # A video of class 5 whose lines equal class 2's is never correct.
    iv = true_class_intervals(s_v, s_a, labels)
    assert iv.empty[:20].all()


def test_tie_rule_closes_the_interval_toward_the_lower_index() -> None:
    """f_0 = λ and f_1 = 1 − λ tie at λ = 1/2, where np.argmax picks class 0."""
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    iv = true_class_intervals(a, b, np.array([0, 1]))
    assert (iv.lo[0], iv.hi[0], iv.lo_open[0], iv.hi_open[0]) == (0.5, 1.0, False, False)
    assert (iv.lo[1], iv.hi[1], iv.lo_open[1], iv.hi_open[1]) == (0.0, 0.5, False, True)
    curve = exact_lambda_curve(a, b, np.array([0, 0]), transform=None)
    np.testing.assert_array_equal(curve.breakpoints, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(curve.values, [0.0, 1.0])
    np.testing.assert_array_equal(curve.point_values, [0.0, 1.0, 1.0])
    assert curve.at(0.5)[0] == (fused_top1_full(a, b, 0.5) == 0).mean() == 1.0


def test_point_only_and_empty_sets() -> None:
    """A true class tying the winner at one λ only wins there; a dominated class never does."""
    # Class 1 (label) touches the envelope of classes 0 and 2 only at λ = 0.5 and loses ties to 0.
    a = np.array([[1.0, 0.5, 0.0]])
    b = np.array([[0.0, 0.5, 1.0]])
    iv = true_class_intervals(a, b, np.array([1]))
    assert iv.empty[0]  # 0.5 ties class 0 (lower index) at λ = 0.5
    # Put the touching line first: it wins the three-way tie at λ = 0.5, and only there.
    a2, b2 = a[:, [1, 0, 2]], b[:, [1, 0, 2]]
    iv2 = true_class_intervals(a2, b2, np.array([0]))
    assert not iv2.empty[0] and iv2.lo[0] == iv2.hi[0] == 0.5
    curve = exact_lambda_curve(a2, b2, np.array([0]), transform=None)
    assert curve.at(0.5)[0] == (fused_top1_full(a2, b2, 0.5) == 0).mean() == 1.0
    assert curve.at(0.5)[0] == 1.0 and curve.at([0.49, 0.51]).tolist() == [0.0, 0.0]
    assert curve.best()[2] == 0.0  # an isolated tie is not an optimum interval


def test_best_interval_is_optimal_and_widest() -> None:
    s_v, s_a, labels = random_scores(n=500, k=10, seed=3)
    curve = exact_lambda_curve(s_v, s_a, labels, transform="softmax")
    lo, hi, value = curve.best()
    assert 0.0 <= lo < hi <= 1.0
    a, b = transform_scores(s_v), transform_scores(s_a)
    grid_best = brute_force(a, b, labels, GRID[off_breakpoints(curve, GRID)]).max()
    assert value == pytest.approx(grid_best, abs=1e-12)  # the grid finds no better λ
    inside = np.linspace(lo, hi, 7)[1:-1]
    np.testing.assert_allclose(curve.at(inside), value, atol=1e-12)
    assert curve.best_lambda == pytest.approx(0.5 * (lo + hi))
    # Widest among equal optima: two optimal runs, the second wider.
    hand = LambdaCurve(
        breakpoints=np.array([0.0, 0.1, 0.2, 0.5, 1.0]),
        values=np.array([0.8, 0.5, 0.8, 0.8]),
        point_values=np.array([0.8, 0.8, 0.5, 0.8, 0.8]),
    )
    assert hand.best() == (0.2, 1.0, 0.8)
    # A dip exactly at a breakpoint splits a run.
    dip = LambdaCurve(
        breakpoints=np.array([0.0, 0.7, 1.0]), values=np.array([0.9, 0.9]), point_values=np.array([0.9, 0.1, 0.9])
    )
    assert dip.best() == (0.0, 0.7, 0.9)


def test_chunking_does_not_change_the_curve() -> None:
    s_v, s_a, labels = random_scores(n=257, k=9, seed=4)
    c1 = exact_lambda_curve(s_v, s_a, labels, chunk_elements=9 * 5)
    c2 = exact_lambda_curve(s_v, s_a, labels, chunk_elements=1 << 20)
    np.testing.assert_array_equal(c1.breakpoints, c2.breakpoints)
    np.testing.assert_array_equal(c1.values, c2.values)
    np.testing.assert_array_equal(c1.point_values, c2.point_values)


def test_plot_writes_png(tmp_path) -> None:
    s_v, s_a, labels = random_scores(n=100, k=5, seed=5)
    out = exact_lambda_curve(s_v, s_a, labels).plot(tmp_path / "sub" / "curve.png", mark=0.6)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_to_dict_round_trips_the_optimum() -> None:
    s_v, s_a, labels = random_scores(n=60, k=4, seed=6)
    curve = exact_lambda_curve(s_v, s_a, labels, metric="mean_class")
    d = curve.to_dict()
    assert d["best_interval"] == list(curve.best()[:2]) and d["metric"] == "mean_class"
    assert len(d["breakpoints"]) == len(d["values"]) + 1 == len(d["point_values"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(s_a=np.zeros((3, 5))), "differ in shape"),
        (dict(labels=np.array([0, 1, 9])), r"labels must lie in \[0, 3\]"),
        (dict(labels=np.zeros((3, 4))), "multi-label"),
        (dict(labels=np.array([0, 1])), "2 labels for 3 score rows"),
        (dict(transform="sigmoid"), "transform: got 'sigmoid'"),
        (dict(metric="map"), "metric: got 'map'"),
        (dict(s_v=np.full((3, 4), np.nan)), "NaN"),
    ],
)
def test_bad_input_is_named(kwargs: dict, message: str) -> None:
    args = dict(s_v=np.zeros((3, 4)), s_a=np.zeros((3, 4)), labels=np.array([0, 1, 2]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        exact_lambda_curve(**args)


def test_at_rejects_lambda_outside_unit_interval() -> None:
    curve = exact_lambda_curve(np.eye(3), np.eye(3), np.arange(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        curve.at([0.5, 1.5])


# ------------------------------------------------------------------------------- candidate fast path
@pytest.mark.parametrize("transform", ["softmax", "cosine"])
def test_candidate_fusion_equals_full_computation(transform: str) -> None:
    s_v, s_a, labels = random_scores(n=2_000, k=40, seed=8)
    fast = CandidateFusion.from_scores(s_v, s_a, labels, transform=transform)
    a = transform_scores(s_v, transform).astype(np.float32)
    b = transform_scores(s_a, transform).astype(np.float32)
    assert fast.width < 40 // 2  # the point: a few candidates instead of K
    lams = np.concatenate([np.random.default_rng(0).random(300), [0.0, 0.5, 1.0]])
    for lam in lams:
        full = fused_top1_full(a, b, lam) == labels
        np.testing.assert_array_equal(fast.correct(lam), full)
        assert fast.top1(lam) == full.mean()
    w = metric_weights(labels, "mean_class")
    assert fast.accuracy(0.3, "mean_class") == pytest.approx(w[fused_top1_full(a, b, 0.3) == labels].sum())


def test_candidate_fusion_handles_exact_ties() -> None:
    """Integer scores + dyadic λ: exact ties everywhere; candidates keep np.argmax's choice."""
    rng = np.random.default_rng(9)
    n, k = 500, 7
    a = rng.integers(0, 4, size=(n, k)).astype(np.float32)
    b = rng.integers(0, 4, size=(n, k)).astype(np.float32)
    a[:, 6] = a[:, 1]
    b[:, 6] = b[:, 1]
    labels = rng.integers(0, k, n)
    fast = CandidateFusion.from_transformed(a, b, labels)
    padded = CandidateFusion.from_transformed(a, b, labels, max_exact_width=2)  # wider rows share one padded group
    assert any(bk.a.shape[0] > 2 for bk in padded.buckets) and len(padded.buckets) == 2
    for lam in np.linspace(0.0, 1.0, 257):  # dyadic steps of 1/256, ties hit exactly
        expected = fused_top1_full(a, b, lam) == labels
        np.testing.assert_array_equal(fast.correct(lam), expected)
        np.testing.assert_array_equal(padded.correct(lam), expected)
    # Exact curve on the same scores agrees wherever it is off its breakpoints.
    curve = exact_lambda_curve(a, b, labels, transform=None)
    lams = GRID[off_breakpoints(curve, GRID)][::50]
    np.testing.assert_allclose([fast.top1(x) for x in lams], curve.at(lams), atol=1e-12)
