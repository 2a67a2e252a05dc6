"""Model speed: Video Concept Spotting vs the mean pool, and VCS's share of a ViT-B/32 training step.

Run: ``python -m pytest -q benchmarks/test_bench_model.py --benchmark-enable --benchmark-only``

* VCS vs mean pool, forward + backward, at B=32 videos, T=8 frames, K=32 classes (the batch's
  prompts), L=77 positions, for the tiny width (D=64) and ViT-B/32's (D=512).
* The bike-tiny image tower on one 8-frame 64x64 clip (goal: milliseconds).
* A full ViT-B/32 training step (random weights, 2 videos x 8 frames at 224 px; frozen text tower on
  the batch's prompts; 6-layer temporal transformer; VCS; soft-KL loss; AdamW step) and the VCS part
  of that step alone. Goal: VCS <= 5 % of a step. The share (of the minimum times, which resist
  other load on a shared machine) is printed and stored in ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bike.backbone import load_clip, set_category_encoder_trainable
from bike.losses import LogitScale, multi_positive_contrastive
from bike.saliency import video_concept_spotting
from bike.temporal import mean_pool
from bike.video_branch import VideoBranch

torch.set_num_threads(2)

B, T, K, L = 32, 8, 32, 77
STEP_VIDEOS, STEP_FRAMES, STEP_RES = 2, 8, 224
CLASS_NAMES = ["juggling soccer ball", "abseiling"]
RESULTS: dict[str, float] = {}


def _interaction_inputs(width: int):
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(B, T, width, generator=gen, requires_grad=True)
    tokens = torch.randn(K, L, width, generator=gen)
    cls = torch.randn(K, width, generator=gen)
    return frames, tokens, cls


def _vcs_step(frames, tokens, cls):
    frames.grad = None
    video_concept_spotting(frames, tokens, cls).sum().backward()


def _mean_step(frames, tokens, cls):
    frames.grad = None
    (mean_pool(frames) @ F.normalize(cls, dim=-1).t()).sum().backward()


@pytest.mark.parametrize("width", [64, 512])
@pytest.mark.parametrize("kind", ["vcs", "mean"])
def test_interaction_forward_backward(benchmark, kind, width):
    inputs = _interaction_inputs(width)
    fn = _vcs_step if kind == "vcs" else _mean_step
    benchmark.pedantic(fn, args=inputs, rounds=20, iterations=3, warmup_rounds=2)
    RESULTS[f"{kind}-{width}"] = benchmark.stats.stats.min
    other = RESULTS.get(f"{'mean' if kind == 'vcs' else 'vcs'}-{width}")
    if other is not None:
        vcs, mean = (RESULTS[f"vcs-{width}"], RESULTS[f"mean-{width}"])
        benchmark.extra_info["vcs_over_mean"] = vcs / mean
        print(f"\nD={width}: VCS {vcs * 1e3:.3f} ms vs mean pool {mean * 1e3:.3f} ms ({vcs / mean:.1f}x, min times)")


def test_bike_tiny_encode_frames(benchmark):
    backbone = load_clip("bike-tiny").eval()
    clip = torch.randn(1, 8, 3, 64, 64)

    def forward():
        with torch.no_grad():
            return backbone.encode_frames(clip)

    benchmark.pedantic(forward, rounds=20, iterations=5, warmup_rounds=2)


@pytest.fixture(scope="module")
def vit_b32():
    """ViT-B/32 (random weights), its video branch, logit scale, optimiser and one batch."""
    torch.manual_seed(0)
    backbone = load_clip("ViT-B-32", pretrained=None)
    set_category_encoder_trainable(backbone, False)
    branch = VideoBranch(backbone.embed_dim, temporal="transformer", interaction="vcs")
    scale = LogitScale()
    params = [p for p in backbone.parameters() if p.requires_grad] + list(branch.parameters()) + list(scale.parameters())
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.2)
    clips = torch.randn(STEP_VIDEOS, STEP_FRAMES, 3, STEP_RES, STEP_RES)
    labels = torch.arange(STEP_VIDEOS)
    tokens, word_mask = backbone.tokenize_prompts([CLASS_NAMES[i] for i in labels.tolist()])
    return backbone, branch, scale, opt, clips, labels, tokens, word_mask


def test_vit_b32_training_step(benchmark, vit_b32):
    backbone, branch, scale, opt, clips, labels, tokens, word_mask = vit_b32

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            text = backbone.encode_text(tokens)
        frames = backbone.encode_frames(clips)
        logits = scale() * branch(frames, text, word_mask)
        multi_positive_contrastive(logits, labels).backward()
        opt.step()

    benchmark.pedantic(step, rounds=2, iterations=1, warmup_rounds=1)
    RESULTS["step"] = benchmark.stats.stats.min
    _report_share(benchmark)


def test_vit_b32_vcs_part_of_step(benchmark, vit_b32):
    backbone, _, _, _, _, labels, tokens, _ = vit_b32
    with torch.no_grad():
        text = backbone.encode_text(tokens)
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn(STEP_VIDEOS, STEP_FRAMES, backbone.embed_dim, generator=gen, requires_grad=True)
    benchmark.pedantic(_vcs_step, args=(frames, text.tokens, text.cls), rounds=20, iterations=5, warmup_rounds=2)
    RESULTS["vcs_part"] = benchmark.stats.stats.min
    _report_share(benchmark)


def _report_share(benchmark) -> None:
    if "step" in RESULTS and "vcs_part" in RESULTS:
        share = RESULTS["vcs_part"] / RESULTS["step"]
        benchmark.extra_info["vcs_share_of_step"] = share
        print(
            f"\nViT-B/32 step {RESULTS['step'] * 1e3:.0f} ms; VCS part {RESULTS['vcs_part'] * 1e3:.3f} ms "
            f"= {100 * share:.3f} % of a step (goal <= 5 %)"
        )
