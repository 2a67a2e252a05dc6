"""bike.saliency.video_concept_spotting against an explicit-loop reference, masks, memory, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bike.saliency import video_concept_spotting


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(float((v * v).sum()))


def reference_vcs(frames, tokens, cls, mask, tau, cosine=False):
    """Eq. 5-6 as the released code computes it, one video, one class, one frame at a time; with
    ``cosine`` the logit is Eq. 2's cos(video_k, cls_k) of the weighted video embedding instead."""
    b_n, t_n, _ = frames.shape
    k_n, l_n, _ = tokens.shape
    logits = torch.zeros(b_n, k_n)
    saliency = torch.zeros(b_n, k_n, t_n)
    for b in range(b_n):
        f = [_unit(frames[b, t]) for t in range(t_n)]
        for k in range(k_n):
            c = _unit(cls[k])
            positions = [l for l in range(l_n) if mask is None or bool(mask[k, l])]
            s = torch.zeros(t_n)
            for l in positions:
                w = _unit(tokens[k, l])
                sims = [float((f[t] * w).sum()) / tau for t in range(t_n)]
                top = max(sims)
                exps = [math.exp(v - top) for v in sims]
                total = sum(exps)
                for t in range(t_n):
                    s[t] += exps[t] / total / len(positions)
            video = sum(s[t] * f[t] for t in range(t_n))  # weighted sum, not re-normalised
            logits[b, k] = (_unit(video) * c).sum() if cosine else (video * c).sum()
            saliency[b, k] = s
    return logits, saliency


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_matches_loop_reference(rng, use_mask, tau):
    frames = torch.randn(3, 5, 16, generator=rng) * 2
    tokens = torch.randn(4, 7, 16, generator=rng)
    cls = torch.randn(4, 16, generator=rng)
    mask = torch.rand(4, 7, generator=rng) < 0.4 if use_mask else None
    if mask is not None:
        mask[:, 2] = True  # no empty class
    logits, sal = video_concept_spotting(frames, tokens, cls, token_mask=mask, tau=tau, return_saliency=True)
    ref_logits, ref_sal = reference_vcs(frames, tokens, cls, mask, tau)
    assert logits.shape == (3, 4) and sal.shape == (3, 4, 5)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sal, ref_sal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sal.sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(video_concept_spotting(frames, tokens, cls, token_mask=mask, tau=tau), logits)
    # paper profile: Eq. 2 is a cosine, so the weighted video embedding is re-normalised
    cos_logits = video_concept_spotting(frames, tokens, cls, token_mask=mask, tau=tau, renormalise=True)
    torch.testing.assert_close(cos_logits, reference_vcs(frames, tokens, cls, mask, tau, cosine=True)[0], atol=1e-5, rtol=1e-5)
    assert cos_logits.abs().max() <= 1 + 1e-5 and (cos_logits.abs() >= logits.abs() - 1e-6).all()


def test_unselected_positions_do_not_matter(rng):
    frames = torch.randn(2, 6, 8, generator=rng)
    tokens = torch.randn(3, 5, 8, generator=rng)
    cls = torch.randn(3, 8, generator=rng)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, 1:3] = True
    base = video_concept_spotting(frames, tokens, cls, token_mask=mask)
    changed = tokens.clone()
    changed[:, 3:] = torch.randn(3, 2, 8, generator=rng)
    torch.testing.assert_close(video_concept_spotting(frames, changed, cls, token_mask=mask), base)
    assert (video_concept_spotting(frames, changed, cls) - video_concept_spotting(frames, tokens, cls)).abs().max() > 1e-4


def test_temperature_limits(rng):
    frames = torch.randn(2, 6, 8, generator=rng)
    tokens = torch.randn(3, 1, 8, generator=rng)
    cls = torch.randn(3, 8, generator=rng)
    fn = torch.nn.functional.normalize
    cos_fc = torch.einsum("btd,kd->bkt", fn(frames, dim=-1), fn(cls, dim=-1))
    # very high temperature: uniform saliency, logit = mean over frames of cos(frame, cls)
    logits, sal = video_concept_spotting(frames, tokens, cls, tau=1e6, return_saliency=True)
    torch.testing.assert_close(sal, torch.full_like(sal, 1 / 6))
    torch.testing.assert_close(logits, cos_fc.mean(-1))
    # very low temperature: all saliency on the frame most similar to the (single) word
    logits, sal = video_concept_spotting(frames, tokens, cls, tau=1e-6, return_saliency=True)
    best = torch.einsum("btd,kd->bkt", fn(frames, dim=-1), fn(tokens[:, 0], dim=-1)).argmax(-1)
    torch.testing.assert_close(sal.argmax(-1), best)
    torch.testing.assert_close(logits, cos_fc.gather(-1, best.unsqueeze(-1)).squeeze(-1))


def test_scale_invariance_and_identical_frames(rng):
    frames = torch.randn(1, 4, 8, generator=rng)
    tokens = torch.randn(2, 3, 8, generator=rng)
    cls = torch.randn(2, 8, generator=rng)
    base = video_concept_spotting(frames, tokens, cls)
    torch.testing.assert_close(video_concept_spotting(frames * 7, tokens * 0.1, cls * 3), base)
    same = frames[:, :1].expand(1, 4, 8)
    cos = torch.nn.functional.cosine_similarity(same[0, 0].unsqueeze(0), cls)
    torch.testing.assert_close(video_concept_spotting(same, tokens, cls)[0], cos)


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_never_materialises_b_k_t_d(rng):
    b, t, k, l, d = 4, 6, 5, 3, 128
    frames = torch.randn(b, t, d, generator=rng, requires_grad=True)
    tokens = torch.randn(k, l, d, generator=rng, requires_grad=True)
    cls = torch.randn(k, d, generator=rng, requires_grad=True)
    with _MaxNumel() as probe:
        video_concept_spotting(frames, tokens, cls).sum().backward()
    assert probe.largest < b * k * t * d
    assert probe.largest <= max(b * t * d, k * l * d, b * k * l * t)


def test_gradcheck():
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    cls = torch.randn(2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert torch.autograd.gradcheck(lambda f, w, c: video_concept_spotting(f, w, c, mask, tau=0.5), (frames, tokens, cls))


def test_input_errors():
    f, w, c = torch.randn(2, 3, 4), torch.randn(5, 6, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"frames must be \[B, T, D\]"):
        video_concept_spotting(f[0], w, c)
    with pytest.raises(ValueError, match=r"cls must be \[K, D\]"):
        video_concept_spotting(f, w, c[:3])
    with pytest.raises(ValueError, match="widths differ"):
        video_concept_spotting(f, torch.randn(5, 6, 8), c)
    with pytest.raises(ValueError, match="token_mask must be bool"):
        video_concept_spotting(f, w, c, token_mask=torch.ones(5, 6))
    with pytest.raises(ValueError, match=r"token_mask must be \[K, L\]"):
        video_concept_spotting(f, w, c, token_mask=torch.ones(5, 7, dtype=torch.bool))
    empty = torch.ones(5, 6, dtype=torch.bool)
    empty[3] = False
    with pytest.raises(ValueError, match=r"no position for classes \[3\]"):
        video_concept_spotting(f, w, c, token_mask=empty)
