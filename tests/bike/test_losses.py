"""bike.losses: both loss forms against loop references, the soft target's mass, the logit scale."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bike.losses import LogitScale, multi_positive_contrastive, soft_kl_targets


def _log_softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


def ref_soft_kl(logits: torch.Tensor, labels: torch.Tensor, scale: float) -> float:
    n = logits.shape[0]
    lab = labels.tolist()

    def one_side(mat: list[list[float]]) -> float:
        total = 0.0
        for i in range(n):
            g = [scale * (1.0 if lab[i] == lab[j] else 0.0) for j in range(n)]
            log_q = _log_softmax_row(g)
            log_p = _log_softmax_row(mat[i])
            total += sum(math.exp(log_q[j]) * (log_q[j] - log_p[j]) for j in range(n))
        return total / n  # batchmean

    rows = logits.tolist()
    cols = logits.t().tolist()
    return 0.5 * (one_side(rows) + one_side(cols))


def ref_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    n = logits.shape[0]
    lab = labels.tolist()

    def one_side(mat: list[list[float]]) -> float:
        total = 0.0
        for i in range(n):
            log_p = _log_softmax_row(mat[i])
            pos = [j for j in range(n) if lab[i] == lab[j]]
            total += sum(-log_p[j] for j in pos) / len(pos)
        return total / n

    return 0.5 * (one_side(logits.tolist()) + one_side(logits.t().tolist()))


@pytest.fixture
def batch(rng):
    logits = 100 * (2 * torch.rand(8, 8, generator=rng, dtype=torch.float64) - 1) * 0.3
    labels = torch.tensor([0, 1, 0, 2, 3, 1, 0, 4])
    return logits, labels


@pytest.mark.parametrize("scale", [10.0, 3.0])
def test_soft_kl_matches_loop_reference(batch, scale):
    logits, labels = batch
    loss = multi_positive_contrastive(logits, labels, form="soft_kl", target_scale=scale)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(ref_soft_kl(logits, labels, scale), rel=1e-5, abs=1e-5)


def test_soft_kl_equals_released_code_arithmetic(batch):
    """KLDivLoss(reduction='mean') over B*B entries times B, rows and columns averaged."""
    logits, labels = batch
    g = (labels[:, None] == labels[None, :]).float()
    b = logits.shape[0]
    kl = torch.nn.KLDivLoss(reduction="sum")  # the released 'mean' over B*B entries, times B
    rows = kl(F.log_softmax(logits, 1), F.softmax(g * 10, 1)) / (b * b) * b
    cols = kl(F.log_softmax(logits.t(), 1), F.softmax(g.t() * 10, 1)) / (b * b) * b
    torch.testing.assert_close(multi_positive_contrastive(logits, labels), (rows + cols) / 2, atol=1e-5, rtol=1e-5)


def test_ce_matches_loop_reference(batch):
    logits, labels = batch
    loss = multi_positive_contrastive(logits, labels, form="ce")
    assert loss.item() == pytest.approx(ref_ce(logits, labels), rel=1e-5, abs=1e-5)


def test_ce_with_distinct_labels_is_symmetric_clip_loss(rng):
    logits = torch.randn(6, 6, generator=rng) * 5
    labels = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    torch.testing.assert_close(multi_positive_contrastive(logits, labels, form="ce"), expected)


def test_soft_kl_negatives_mass():
    labels = torch.arange(256)  # a global batch of 256 distinct labels
    target = soft_kl_targets(labels, 10.0)
    neg = (target * (1 - torch.eye(256))).sum(1)
    expected = 255 / (math.exp(10) + 255)
    torch.testing.assert_close(neg, torch.full((256,), expected))
    assert 0.011 < expected < 0.012  # the ~1.1 % quoted in docs/bike-method.md
    # the share depends on the batch size
    assert (soft_kl_targets(torch.arange(32)) * (1 - torch.eye(32))).sum(1)[0] < 0.0015
    # duplicates share the positive mass equally
    t = soft_kl_targets(torch.tensor([0, 0, 1]))
    assert t[0, 0] == pytest.approx(t[0, 1].item()) and t.sum(1).tolist() == pytest.approx([1, 1, 1])


def test_soft_kl_is_zero_at_its_target():
    labels = torch.tensor([0, 1, 1, 2])
    g = (labels[:, None] == labels[None, :]).double()
    assert multi_positive_contrastive(10.0 * g, labels).abs().item() < 1e-12
    assert multi_positive_contrastive(10.0 * g + 3.0, labels).abs().item() < 1e-12  # row shift invariant
    assert multi_positive_contrastive(torch.zeros(4, 4), labels).item() > 0.1


def test_gradients_and_errors(batch):
    logits, labels = batch
    x = logits.float().clone().requires_grad_(True)
    multi_positive_contrastive(x, labels, form="ce").backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="form='kl'"):
        multi_positive_contrastive(logits, labels, form="kl")
    with pytest.raises(ValueError, match=r"logits must be \[B, B\]"):
        multi_positive_contrastive(logits[:, :4], labels)
    with pytest.raises(ValueError, match=r"labels must be \[B\]"):
        multi_positive_contrastive(logits, labels[:3])


def test_logit_scale():
    learned = LogitScale()
    assert learned().item() == pytest.approx(100.0)
    assert [n for n, _ in learned.named_parameters()] == ["log_scale"]
    (learned() * 2).backward()
    assert learned.log_scale.grad.item() == pytest.approx(200.0)
    fixed = LogitScale(init=math.log(50), learnable=False)
    assert fixed().item() == pytest.approx(50.0) and list(fixed.parameters()) == []
    assert "log_scale" in fixed.state_dict()
