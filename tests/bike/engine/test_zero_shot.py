"""The authors' frame-level zero-shot scores."""

import numpy as np
import pytest
import torch

from bike.engine.zero_shot import FRAME_SOFTMAX_SCALE, frame_level_scores, frame_level_scores_np


def test_frame_level_scores_follow_the_released_formula(rng):
    frames = torch.randn(3, 4, 8, generator=rng) * 0.2  # raw, unnormalised
    cls = torch.randn(5, 8, generator=rng) * 3.0
    got = frame_level_scores(frames, cls)
    c = cls / cls.norm(dim=-1, keepdim=True)
    ref = torch.zeros(3, 5)
    for b in range(3):
        for t in range(4):
            ref[b] += torch.softmax(100.0 * frames[b, t] @ c.T, dim=0) / 4
    torch.testing.assert_close(got, ref)
    assert FRAME_SOFTMAX_SCALE == 100.0
    # the frames are NOT normalised: scaling them sharpens the per-frame softmax
    one = frames[:, :1]
    soft, sharp = frame_level_scores(one * 0.01, cls), frame_level_scores(one, cls)
    assert (sharp.max(dim=1).values > soft.max(dim=1).values).all()
    np.testing.assert_allclose(frame_level_scores_np(frames.numpy(), cls.numpy()), got.double().numpy(), rtol=1e-6)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        frame_level_scores(torch.zeros(2, 8), torch.zeros(3, 8))


def _released_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> list[float]:
    """utils.accuracy of the released code, written from its text: the first k of topk(maxk, sorted)."""
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum(0) * 100.0 / target.size(0)) for k in topk]


def test_zero_shot_ties_are_broken_as_the_released_accuracy(rng):
    from bike.engine.caches import evaluate_class_splits
    from bike.metrics import topk_accuracy

    # coarse scores: many exact ties at the top and at the 5th place
    scores = torch.randint(0, 4, (400, 12), generator=rng).double() / 4
    labels = torch.randint(0, 12, (400,), generator=rng)
    ref1, ref5 = _released_accuracy(scores, labels)
    got = topk_accuracy(scores.numpy(), labels.numpy(), ties="torch_topk")
    assert float(got["top1"]) == pytest.approx(ref1) and float(got["top5"]) == pytest.approx(ref5)
    low = topk_accuracy(scores.numpy(), labels.numpy(), ties="lowest_index")
    # the two rules differ on these ties (the released top-1 is not the lowest tied index)
    assert (float(low["top1"]), float(low["top5"])) != (ref1, ref5)
    # the class-split protocol passes the rule on: one split of every class equals the full evaluation
    res = evaluate_class_splits(labels.numpy(), [np.arange(12)], lambda r, c: scores.numpy()[np.ix_(r, c)], "torch_topk")
    assert res.top1 == [pytest.approx(ref1)] and res.top5 == [pytest.approx(ref5)]
    with pytest.raises(ValueError, match="ties="):
        topk_accuracy(scores.numpy(), labels.numpy(), ties="random")


def test_zero_shot_tie_rule_is_a_profile_switch():
    from bike.config import RunConfig

    assert RunConfig().eval.zero_shot_ties == "torch_topk"
    assert RunConfig(profile="paper").eval.zero_shot_ties == "lowest_index"
