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
