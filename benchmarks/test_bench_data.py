"""Data-pipeline speed: sampled-frame decoding per backend, and clips/s of the whole loader.

Run: ``python -m pytest -q benchmarks/test_bench_data.py --benchmark-enable --benchmark-only``

Goal: the loader (decord + TSN sampling + Table A.1 augmentation) on one core delivers at least 2x the
clips/s of a naive reader that decodes every frame with PyAV and then picks the sampled ones, through
the same transforms. The ratio is printed and stored in the benchmark's ``extra_info``.
"""

from __future__ import annotations

import time

import av
import numpy as np
import pytest
import torch

from bike.config import RunConfig
from bike.data.dataset import VideoDataset
from bike.data.decode import decode_frames
from bike.data.lists import VideoRecord
from bike.data.loader import make_loader
from bike.data.sampling import tsn_test_indices, tsn_train_indices
from bike.data.video_io import write_mp4

SECONDS, FPS, HEIGHT, WIDTH = 10, 25, 240, 320
NUM_VIDEOS = 3
FRAMES = 8
RESULTS: dict[str, float] = {}


def synthetic_video(seed: int) -> np.ndarray:
    """``uint8 [SECONDS * FPS, 240, 320, 3]``: a drifting gradient, two moving boxes and mild noise."""
    rng = np.random.default_rng(seed)
    n = SECONDS * FPS
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    out = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(n):
        frame = np.stack([(xx + 2 * t) % 256, (yy + t) % 256, ((xx + yy) // 2 + 3 * t) % 256], -1).astype(np.int16)
        for k, (vy, vx) in enumerate(((1, 2), (2, -3))):
            y0, x0 = (40 + vy * t) % (HEIGHT - 50), (60 + vx * t) % (WIDTH - 60)
            frame[y0 : y0 + 50, x0 : x0 + 60] = (200, 40 + 100 * k, 90)
        frame += rng.integers(-6, 7, frame.shape, dtype=np.int16)
        out[t] = np.clip(frame, 0, 255)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_videos")
    recs = []
    for i in range(NUM_VIDEOS):
        path = write_mp4(d / f"v{i}.mp4", synthetic_video(i), fps=FPS)  # lossy H.264, like a real dataset
        recs.append(VideoRecord(str(path), i, f"v{i}.mp4"))
    return recs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # "one core" for the main process
    yield
    torch.set_num_threads(before)


INDICES = tsn_test_indices(SECONDS * FPS, FRAMES, "centre")


@pytest.mark.parametrize("backend", ["decord", "pyav", "pyav_seek"])
def test_decode_8_sampled_frames(benchmark, videos, backend):
    frames = benchmark.pedantic(decode_frames, args=(videos[0], INDICES, backend), rounds=5, warmup_rounds=1)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


class DecodeAllThenPick(VideoDataset):
    """Baseline reader: decode every frame with PyAV, convert all to RGB, then pick the TSN frames."""

    def _train_clip(self, record):
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        with av.open(record.path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        idx = tsn_train_indices(len(frames), self.frames, gen)
        return self.train_transform(np.stack([frames[i] for i in idx]), gen), None


def _epoch(loader) -> int:
    return sum(len(b) for b in loader)


def _clips_per_second(benchmark, loader, rounds: int) -> float:
    n = benchmark.pedantic(_epoch, args=(loader,), rounds=rounds, warmup_rounds=1)
    assert n == NUM_VIDEOS
    cps = NUM_VIDEOS / benchmark.stats.stats.mean
    benchmark.extra_info["clips_per_s"] = round(cps, 2)
    return cps


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_clips_per_second(benchmark, videos, workers):
    ds = VideoDataset(videos, RunConfig(), train=True)
    loader = make_loader(ds, batch_size=1, train=True, num_workers=workers, seed=0)
    RESULTS[f"loader_{workers}"] = _clips_per_second(benchmark, loader, rounds=3)


def test_baseline_decode_all_then_pick(benchmark, videos, capsys):
    ds = DecodeAllThenPick(videos, RunConfig(), train=True)
    loader = make_loader(ds, batch_size=1, train=True, num_workers=0, seed=0)
    base = _clips_per_second(benchmark, loader, rounds=2)
    RESULTS["baseline"] = base
    if "loader_0" not in RESULTS:  # run alone: measure the loader here too
        fast = make_loader(VideoDataset(videos, RunConfig(), train=True), batch_size=1, train=True, num_workers=0)
        _epoch(fast)
        start = time.perf_counter()
        _epoch(fast)
        RESULTS["loader_0"] = NUM_VIDEOS / (time.perf_counter() - start)
    ratio = RESULTS["loader_0"] / base
    benchmark.extra_info["loader_vs_baseline"] = round(ratio, 2)
    with capsys.disabled():
        print(
            f"\n[data] clips/s: loader 0 workers {RESULTS['loader_0']:.2f}, "
            f"2 workers {RESULTS.get('loader_2', float('nan')):.2f}, baseline {base:.2f} "
            f"-> loader/baseline = {ratio:.2f}x (goal >= 2x)"
        )
