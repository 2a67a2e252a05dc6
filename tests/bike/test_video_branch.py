"""bike.video_branch.VideoBranch: each variant against a loop reference, config mapping, errors."""

from __future__ import annotations

import math

import pytest
import torch

from bike.backbone import TextFeatures
from bike.config import RunConfig
from bike.saliency import video_concept_spotting
from bike.video_branch import VideoBranch

B, T, K, L, D = 3, 4, 5, 6, 16


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(float((v * v).sum()))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def reference(frames, tokens, cls, mask, tau, saliency_source, recognition_source, interaction, rec_mask=None):
    """One video and one class at a time; frames already through the temporal module. ``mask``: the
    positions VCS spots with; ``rec_mask``: the positions "Word Emb." recognition averages (None: all 77)."""
    out = torch.zeros(frames.shape[0], tokens.shape[0])
    for b in range(frames.shape[0]):
        f = [_unit(frames[b, t]) for t in range(frames.shape[1])]
        for k in range(tokens.shape[0]):
            words = [_unit(tokens[k, l]) for l in range(tokens.shape[1]) if mask is None or bool(mask[k, l])]
            rec_words = [_unit(tokens[k, l]) for l in range(tokens.shape[1]) if rec_mask is None or bool(rec_mask[k, l])]
            rec = _unit(cls[k]) if recognition_source == "cls" else _unit(sum(rec_words) / len(rec_words))
            if interaction == "mean":
                out[b, k] = _dot(_unit(sum(frames[b]) / len(f)), rec)
                continue
            queries = [_unit(cls[k])] if saliency_source == "cls" else words
            s = [0.0] * len(f)
            for q in queries:
                e = [math.exp(_dot(ft, q) / tau) for ft in f]
                for t in range(len(f)):
                    s[t] += e[t] / sum(e) / len(queries)
            out[b, k] = sum(s[t] * _dot(f[t], rec) for t in range(len(f)))
    return out


@pytest.fixture
def inputs(rng):
    frames = torch.randn(B, T, D, generator=rng)
    text = TextFeatures(cls=torch.randn(K, D, generator=rng), tokens=torch.randn(K, L, D, generator=rng))
    mask = torch.zeros(K, L, dtype=torch.bool)
    for k in range(K):
        mask[k, 1 : 2 + k % 3] = True
    return frames, text, mask


@pytest.mark.parametrize("interaction", ["mean", "vcs"])
@pytest.mark.parametrize("vcs_tokens", ["all", "words"])
@pytest.mark.parametrize("saliency_source", ["words", "cls"])
@pytest.mark.parametrize("recognition_source,recognition_tokens", [("cls", "words"), ("words", "words"), ("words", "all")])
def test_variants_match_loop_reference(inputs, interaction, vcs_tokens, saliency_source, recognition_source,
                                       recognition_tokens):
    frames, text, mask = inputs
    tau = 0.1
    branch = VideoBranch(
        D,
        temporal="none",
        interaction=interaction,
        vcs_tokens=vcs_tokens,
        vcs_tau=tau,
        saliency_source=saliency_source,
        recognition_source=recognition_source,
        recognition_tokens=recognition_tokens,
    )
    logits = branch(frames, text, mask)
    ref = reference(
        frames, text.tokens, text.cls, mask if vcs_tokens == "words" else None, tau,
        saliency_source, recognition_source, interaction,
        rec_mask=mask if recognition_tokens == "words" else None,
    )
    assert logits.shape == (B, K)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


def test_temporal_transformer_feeds_vcs(inputs):
    frames, text, mask = inputs
    torch.manual_seed(0)
    branch = VideoBranch(D, temporal="transformer", temporal_layers=2, vcs_tokens="words")
    assert branch.temporal is not None and len(branch.temporal.resblocks) == 2
    logits, sal = branch(frames, text, mask, return_saliency=True)
    expected, expected_sal = video_concept_spotting(
        branch.temporal(frames), text.tokens, text.cls, mask, tau=0.01, return_saliency=True
    )
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(sal, expected_sal)
    logits.sum().backward()
    assert all(p.grad is not None for p in branch.parameters())


def test_mean_pool_saliency_is_uniform(inputs):
    frames, text, mask = inputs
    logits, sal = VideoBranch(D, temporal="none", interaction="mean")(frames, text, mask, return_saliency=True)
    torch.testing.assert_close(sal, torch.full((B, K, T), 1 / T))
    assert VideoBranch(D, temporal="none").encode_video(frames) is frames


def test_from_config_profiles():
    official = VideoBranch.from_config(RunConfig().model, width=D)
    assert official.temporal is not None and len(official.temporal.resblocks) == 6
    assert (official.interaction, official.vcs_tokens, official.vcs_tau) == ("vcs", "all", 0.01)
    paper = VideoBranch.from_config(RunConfig(profile="paper").model, width=D)
    assert paper.vcs_tokens == "words"
    assert (official.vcs_renormalise, paper.vcs_renormalise) == (False, True)
    cfg = RunConfig(
        model={"temporal": "none", "interaction": "mean", "saliency_source": "cls", "recognition_source": "words"}
    ).model
    branch = VideoBranch.from_config(cfg, width=D)
    assert branch.temporal is None
    assert (branch.interaction, branch.saliency_source, branch.recognition_source) == ("mean", "cls", "words")


def test_errors(inputs):
    frames, text, mask = inputs
    with pytest.raises(ValueError, match=r"interaction='attn'; expected one of \('mean', 'vcs'\)"):
        VideoBranch(D, interaction="attn")
    with pytest.raises(ValueError, match="vcs_tau"):
        VideoBranch(D, vcs_tau=0.0)
    words = VideoBranch(D, temporal="none", vcs_tokens="words")
    with pytest.raises(ValueError, match="needs word_mask"):
        words(frames, text, None)
    with pytest.raises(ValueError, match=r"word_mask must be \[K, L\]"):
        words(frames, text, mask[:, :3])


def test_word_recognition_averages_the_class_name_not_the_padding(inputs):
    """Table 6b "Word Emb.": the mean of the class-name tokens (the paper's text), whatever VCS spots with."""
    frames, text, mask = inputs
    cfg = RunConfig(model={"recognition_source": "words", "interaction": "mean", "temporal": "none"})
    assert cfg.model.recognition_tokens == "words" and cfg.model.vcs_tokens == "all"
    branch = VideoBranch.from_config(cfg.model, D)
    assert branch.needs_word_mask
    with pytest.raises(ValueError, match="recognition_tokens='words' needs word_mask"):
        branch(frames, text)
    got = branch(frames, text, mask)
    # padding positions change nothing: overwrite every unmasked position
    noisy = TextFeatures(cls=text.cls, tokens=torch.where(mask[..., None], text.tokens, torch.randn(K, L, D)))
    torch.testing.assert_close(branch(frames, noisy, mask), got)
    assert not VideoBranch(D, temporal="none").needs_word_mask  # official VCS over all positions, [CLS] recognition
