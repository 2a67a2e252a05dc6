"""bike.fusion: score transforms and Eq. 4 fusion on tensors and arrays, against loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bike.fusion import fuse, score_transform


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
