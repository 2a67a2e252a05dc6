"""Engine speed on the tiny model (bike-tiny, 8 frames of 64 x 64): training steps/s, evaluation clips/s,
and protocols computed from cached scores instead of re-running the network.

Run: ``python -m pytest -q benchmarks/test_bench_engine.py --benchmark-enable --benchmark-only``

Clips are synthetic tensors in memory, so the numbers measure the engine and the model, not decoding
(``benchmarks/test_bench_data.py`` measures the loader).

Goals: the 10 half-class zero-shot splits from the cache cost at most 1.2x one evaluation pass (they cost
far less: the frame-level path re-runs only a ``[N, T, D] x [D, K/2]`` product per split); 100 λ values
of the fusion sweep from the cache versus re-running the evaluation 100 times: the speed-up is stored in
``extra_info`` and printed.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bike.config import RunConfig
from bike.data.dataset import BadVideoLog, VideoItem
from bike.engine.caches import evaluate_class_splits
from bike.engine.eval_loop import score_videos
from bike.engine.model import BikeModel
from bike.engine.optim import WarmupCosineSchedule, build_optimizer
from bike.engine.train_loop import VideoStageTask
from bike.engine.zero_shot import frame_level_scores_np
from bike.fusion import combine, score_transform
from bike.metrics import topk_accuracy
from bike.protocols import half_class_splits

FRAMES, SIZE, NUM_CLASSES = 8, 64, 20
TRAIN_BATCH = 8
EVAL_VIDEOS, EVAL_BATCH = 64, 16
LAMBDAS = 100
RESULTS: dict[str, float] = {}
CLASS_NAMES = [f"{c} {s}" for c in ("red", "green", "blue", "yellow", "purple") for s in ("ball", "square", "cross", "triangle")]


def _config() -> RunConfig:
    return RunConfig.model_validate({
        "model": {"backbone": "bike-tiny", "pretrained": None, "frames": FRAMES, "resolution": SIZE},
        "attributes": {"enabled": False},
        "train": {"batch_size": TRAIN_BATCH, "precision": "fp32", "warmup_epochs": 0, "epochs": 1},
        "eval": {"batch_size": EVAL_BATCH},
        "data": {"num_workers": 0},
    })


class _Clips(torch.utils.data.Dataset):
    """``n`` fixed random clips ``[T, 3, 64, 64]`` in test mode (one view each)."""

    num_views = 1

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.clips = torch.randn(n, FRAMES, 3, SIZE, SIZE, generator=g)
        self.records = [SimpleNamespace(video_id=f"v{i}") for i in range(n)]
        self.bad_log = BadVideoLog(total=n, train=False)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> VideoItem:
        return VideoItem(self.clips[i], i % NUM_CLASSES, f"v{i}", 0)


@pytest.fixture(scope="module")
def model() -> BikeModel:
    torch.manual_seed(0)
    return BikeModel.from_config(_config(), CLASS_NAMES)


def _one_eval(model: BikeModel, data: _Clips, mode: str = "video"):
    return score_videos(model, data, _config(), torch.device("cpu"), mode=mode, collect_frames=(mode == "frame"))


def test_training_steps_per_second(benchmark, model):
    cfg = _config()
    model.configure_stage("video", finetune_category_encoder=False)
    task = VideoStageTask(model, _Clips(TRAIN_BATCH), cfg, torch.device("cpu"), 0, 0)
    opt = build_optimizer(model, cfg.train, model.is_pretrained)
    sched = WarmupCosineSchedule(opt, 0, 1)
    batch = _Batch(task.dataset.clips, torch.arange(TRAIN_BATCH) % NUM_CLASSES)

    def step():
        sched.step(0.5)
        loss = task.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    RESULTS["train_steps_per_s"] = 1.0 / benchmark.stats.stats.mean
    benchmark.extra_info["steps_per_s"] = RESULTS["train_steps_per_s"]
    benchmark.extra_info["videos_per_step"] = TRAIN_BATCH
    print(f"\ntraining: {RESULTS['train_steps_per_s']:.2f} steps/s of {TRAIN_BATCH} clips")


class _Batch:
    def __init__(self, clips: torch.Tensor, labels: torch.Tensor):
        self.clips, self.labels = clips, labels

    def __len__(self) -> int:
        return len(self.labels)


def test_evaluation_clips_per_second(benchmark, model):
    data = _Clips(EVAL_VIDEOS)
    benchmark.pedantic(_one_eval, args=(model, data), rounds=3, warmup_rounds=1)
    RESULTS["eval_s"] = benchmark.stats.stats.mean
    benchmark.extra_info["clips_per_s"] = EVAL_VIDEOS / RESULTS["eval_s"]
    print(f"\nevaluation: {EVAL_VIDEOS / RESULTS['eval_s']:.1f} clips/s")


def _median_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_half_class_splits_from_cache_vs_one_evaluation(benchmark, model):
    data = _Clips(EVAL_VIDEOS)
    vs = _one_eval(model, data, mode="frame")
    fe, ce, labels = vs.frame_emb, vs.class_emb, vs.labels
    splits = half_class_splits(NUM_CLASSES, 10)

    def ten_splits():
        return evaluate_class_splits(labels, splits, lambda r, c: frame_level_scores_np(fe[r], ce[c]))

    res = benchmark.pedantic(ten_splits, rounds=5, warmup_rounds=1)
    assert len(res.top1) == 10
    one_eval = _median_time(lambda: _one_eval(model, data, mode="frame"))
    ratio = benchmark.stats.stats.mean / one_eval
    benchmark.extra_info["ratio_to_one_evaluation"] = ratio
    benchmark.extra_info["goal"] = "<= 1.2"
    print(f"\n10 half-class splits from the cache: {ratio:.4f} x one evaluation (goal <= 1.2)")


def test_lambda_sweep_from_cache_vs_rerunning_evaluation(benchmark, model):
    data = _Clips(EVAL_VIDEOS)
    vs = _one_eval(model, data)
    g = np.random.default_rng(0)
    attr = g.normal(size=vs.scores.shape)
    lams = np.linspace(0.0, 1.0, LAMBDAS)

    def sweep():  # each side transformed once (bike.fusion), then one fusion and one argmax per λ
        t_v = score_transform(vs.scores, "softmax", score_kind=vs.score_kind, dtype=np.float64)
        t_a = score_transform(attr, "softmax", dtype=np.float64)
        return np.array([float(topk_accuracy(combine(t_v, t_a, float(lam)), vs.labels, ks=(1,))["top1"]) for lam in lams])

    out = benchmark.pedantic(sweep, rounds=5, warmup_rounds=1)
    assert out.shape == (LAMBDAS,)
    one_eval = _median_time(lambda: _one_eval(model, data))
    speedup = LAMBDAS * one_eval / benchmark.stats.stats.mean
    benchmark.extra_info["speedup_vs_100_evaluations"] = speedup
    print(f"\n100 λ values from the cache: {speedup:.0f}x faster than re-running the evaluation 100 times")
