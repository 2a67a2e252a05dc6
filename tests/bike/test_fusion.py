"""bike.fusion: score transforms and Eq. 4 fusion on tensors and arrays, against loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bike.fusion import combine, fuse, score_transform, softmax


def ref_softmax_rows(s: list[list[float]]) -> list[list[float]]:
    out = []
    for row in s:
        top = max(row)
        e = [math.exp(v - top) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def test_softmax_transform_matches_reference_on_tensor_and_array(rng):
    s = torch.randn(4, 6, generator=rng) * 0.3
    ref = torch.tensor(ref_softmax_rows(s.tolist()))
    torch.testing.assert_close(score_transform(s, "softmax"), ref)
    out = score_transform(s.numpy(), "softmax")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-6)
    # stable with large scores
    big = np.array([[1000.0, 999.0]])
    np.testing.assert_allclose(score_transform(big, "softmax"), [[1 / (1 + math.e**-1), 1 / (1 + math.e)]])
    assert score_transform(np.array([[1, 2]]), "softmax").dtype == np.float64


def test_cosine_transform_is_identity(rng):
    s = torch.randn(3, 5, generator=rng)
    assert score_transform(s, "cosine") is s
    with pytest.raises(ValueError, match="kind='tanh'; expected one of"):
        score_transform(s, "tanh")


@pytest.mark.parametrize("transform", ["softmax", "cosine"])
@pytest.mark.parametrize("lam", [0.0, 0.6, 0.7, 1.0])
def test_fuse_matches_reference(rng, transform, lam):
    s_v = torch.randn(5, 7, generator=rng, dtype=torch.float64) * 0.2
    s_a = torch.randn(5, 7, generator=rng, dtype=torch.float64) * 0.2
    tv = ref_softmax_rows(s_v.tolist()) if transform == "softmax" else s_v.tolist()
    ta = ref_softmax_rows(s_a.tolist()) if transform == "softmax" else s_a.tolist()
    ref = [[lam * tv[n][k] + (1 - lam) * ta[n][k] for k in range(7)] for n in range(5)]
    torch.testing.assert_close(fuse(s_v, s_a, lam, transform), torch.tensor(ref, dtype=torch.float64))
    np.testing.assert_allclose(fuse(s_v.numpy(), s_a.numpy(), lam, transform), np.array(ref), rtol=1e-12)


def test_fusion_can_change_the_prediction():
    s_v = torch.tensor([[0.30, 0.29]])
    s_a = torch.tensor([[0.10, 0.20]])
    assert fuse(s_v, s_a, 1.0).argmax().item() == 0
    assert fuse(s_v, s_a, 0.6, "cosine").argmax().item() == 1


def test_fuse_errors():
    a = np.zeros((2, 3))
    with pytest.raises(ValueError, match="lam=1.5"):
        fuse(a, a, 1.5)
    with pytest.raises(ValueError, match=r"video \(2, 3\) vs attributes \(2, 4\)"):
        fuse(a, np.zeros((2, 4)), 0.5)


def np_ref_softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_numpy_softmax_any_rank_temperature_and_chunking():
    g = np.random.default_rng(0)
    x = g.normal(size=(3000, 40)) * 4  # several chunks of CHUNK_ELEMENTS
    np.testing.assert_allclose(softmax(x), np_ref_softmax(x), rtol=1e-13)
    v = g.normal(size=(7, 3, 5))
    np.testing.assert_allclose(softmax(v, 0.5), np_ref_softmax(v, 0.5), rtol=1e-13)
    np.testing.assert_allclose(softmax(np.array([1.0, 2.0])), np_ref_softmax(np.array([[1.0, 2.0]]))[0])
    assert softmax(x.astype(np.float32)).dtype == np.float32 and softmax(x.astype(np.float32), dtype=np.float64).dtype == np.float64


def test_float64_path_of_float32_scores():
    g = np.random.default_rng(1)
    s_v, s_a = (g.normal(size=(20, 6)).astype(np.float32) for _ in range(2))
    out = fuse(s_v, s_a, 0.6, "softmax", dtype=np.float64)
    ref = 0.6 * np_ref_softmax(s_v) + (1 - 0.6) * np_ref_softmax(s_a)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=1e-13)
    cos = fuse(s_v, s_a, 0.6, "cosine", dtype=np.float64)
    np.testing.assert_allclose(cos, 0.6 * s_v.astype(np.float64) + (1 - 0.6) * s_a.astype(np.float64), rtol=1e-15)


def test_view_averaged_probabilities_are_not_softmaxed_again():
    g = np.random.default_rng(2)
    probs = np_ref_softmax(g.normal(size=(8, 3, 5))).mean(axis=1)  # softmax_mean over 3 views
    s_a = g.normal(size=(8, 5))
    out = fuse(probs, s_a, 0.7, "softmax", kind_v="probabilities", dtype=np.float64)
    np.testing.assert_allclose(out, 0.7 * probs + (1 - 0.7) * np_ref_softmax(s_a), rtol=1e-13)
    assert score_transform(probs, "softmax", score_kind="probabilities") is probs
    with pytest.raises(ValueError, match="'cosine' needs unscaled logits"):
        fuse(probs, s_a, 0.7, "cosine", kind_v="probabilities")
    with pytest.raises(ValueError, match="score_kind='scores'"):
        score_transform(probs, "softmax", score_kind="scores")


def test_combine_is_the_lambda_rule_on_transformed_sides():
    a, b = np.array([[0.2, 0.8]]), np.array([[0.9, 0.1]])
    np.testing.assert_array_equal(combine(a, b, 0.25), 0.25 * a + (1 - 0.25) * b)
    with pytest.raises(ValueError, match=r"lam=-0.1; expected a value in \[0, 1\]"):
        combine(a, b, -0.1)
    with pytest.raises(ValueError, match="score shapes differ"):
        combine(a, np.zeros((1, 3)), 0.5)
