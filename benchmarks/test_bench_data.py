"""Data-pipeline speed: sampled-frame decoding per backend, and clips/s of the whole loader.

Run: ``python -m pytest -q benchmarks/test_bench_data.py --benchmark-enable --benchmark-only``

Goal: the loader (decord + TSN sampling + Table A.1 augmentation) on one core delivers at least 2x the
clips/s of a naive reader that decodes every frame with PyAV and then picks the sampled ones, through
the same transforms. The ratio is printed and stored in the benchmark's ``extra_info``.

Issue #17 (a data path that can feed a GPU): clips/s **per core** of the training item path
(``VideoDataset.__getitem__``, train, 8 frames, short side 256, 224² random-sized crops) on three input
kinds made from the same frames: *plain* 10 s 320x240 H.264 videos, *prepared* ones
(``harness.dataprepare`` defaults: short side 320, a keyframe every 16 frames) and *frames* (JPEG
folders, ``img_00001.jpg``...). *today* is the path before #17 (decord, the old grayscale and
normalisation formulas); *now* is ``data.decoder: pyav`` (sparse packet decoding) with the current
transforms. Per core = clips / CPU seconds of this process (one torch thread), so other load on the
machine does not count; the wall figure is beside it. Goal: >= 40 clips/s per core on prepared videos
and on JPEG folders.
"""

from __future__ import annotations

import time

import av
import numpy as np
import pytest
import torch

from bike.config import RunConfig
from bike.data.dataset import BadItem, VideoDataset
from bike.data.decode import decode_frames
from bike.data.lists import VideoRecord
from bike.data.loader import make_loader
from bike.data.sampling import tsn_test_indices, tsn_train_indices
from bike.data.transforms import CLIP_MEAN, CLIP_STD, TrainTransform, resize
from bike.data.video_io import write_mp4
from harness.dataprepare import PrepareSettings, encode_one

SECONDS, FPS, HEIGHT, WIDTH = 10, 25, 240, 320
NUM_VIDEOS = 3
FRAMES = 8
RESULTS: dict[str, float] = {}


def synthetic_video(seed: int, seconds: int = SECONDS, fps: int = FPS, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """``uint8 [seconds * fps, height, width, 3]``: a drifting gradient, two moving boxes and mild noise
    (also the source videos of ``test_bench_prepare.py``)."""
    rng = np.random.default_rng(seed)
    n = seconds * fps
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frame = np.stack([(xx + 2 * t) % 256, (yy + t) % 256, ((xx + yy) // 2 + 3 * t) % 256], -1).astype(np.int16)
        for k, (vy, vx) in enumerate(((1, 2), (2, -3))):
            y0, x0 = (40 + vy * t) % (height - 50), (60 + vx * t) % (width - 60)
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
        return self.train_transform(np.stack([frames[i] for i in idx]), gen), None, len(frames)


def _epoch(loader) -> int:
    return sum(len(b) for b in loader)


def _clips_per_second(benchmark, loader, rounds: int) -> float:
    n = benchmark.pedantic(_epoch, args=(loader,), rounds=rounds, warmup_rounds=1)
    assert n == NUM_VIDEOS
    cps = NUM_VIDEOS / benchmark.stats.stats.mean
    benchmark.extra_info["clips_per_s"] = round(cps, 2)
    return cps


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_clips_per_second(benchmark, videos, workers, decoder):
    ds = VideoDataset(videos, RunConfig(data={"decoder": decoder}), train=True)
    loader = make_loader(ds, batch_size=1, train=True, num_workers=workers, seed=0)
    key = f"loader_{workers}" if decoder == "decord" else f"loader_{decoder}_{workers}"
    RESULTS[key] = _clips_per_second(benchmark, loader, rounds=3)


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
            f"-> loader/baseline = {ratio:.2f}x (goal >= 2x); with data.decoder pyav: "
            f"0 workers {RESULTS.get('loader_pyav_0', float('nan')):.2f}, 2 workers {RESULTS.get('loader_pyav_2', float('nan')):.2f}"
        )


# ------------------------------------------------------------------------------------ issue #17
KINDS = ("plain", "prepared", "frames")
PATHS = ("today", "now")
CLIPS_PER_ROUND, ROUNDS = 9, 3
PER_CORE: dict[tuple[str, str], tuple[float, float]] = {}


@pytest.fixture(scope="module")
def inputs(videos, tmp_path_factory):
    """{kind: records}: the plain videos, the same prepared by ``bikebench data prepare``, JPEG folders."""
    from PIL import Image

    prepared, frames = tmp_path_factory.mktemp("bench_prepared"), tmp_path_factory.mktemp("bench_frames")
    out = {"plain": videos, "prepared": [], "frames": []}
    for i, rec in enumerate(videos):
        dst = prepared / f"v{i}.mp4"
        assert encode_one(rec.path, str(dst), PrepareSettings()) is None
        out["prepared"].append(VideoRecord(str(dst), i, f"v{i}.mp4"))
        folder = frames / f"v{i}"
        folder.mkdir()
        for t, frame in enumerate(synthetic_video(i)):
            Image.fromarray(frame).save(folder / f"img_{t + 1:05d}.jpg", quality=90)
        out["frames"].append(VideoRecord(str(folder), i, f"v{i}", num_frames=SECONDS * FPS))
    return out


class TodayTransform(TrainTransform):
    """The train transform before #17: the same pixels, the old grayscale and normalisation code."""

    def apply(self, x, params):
        top, left, h, w = params["box"]
        x = resize(x[..., top : top + h, left : left + w], (self.size, self.size))
        if params["flip"]:
            x = x.flip(-1)
        if params["gray"]:
            lw = torch.tensor((0.299, 0.587, 0.114), dtype=torch.float32).view(1, 3, 1, 1)
            x = (x.to(torch.float32) * lw).sum(dim=1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
            x = x.expand(-1, 3, -1, -1)
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        inv_s = 1.0 / (torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        return x.contiguous().to(torch.float32, copy=True).sub_(m).mul_(inv_s)


def _dataset(records, path: str) -> VideoDataset:
    if path == "now":
        return VideoDataset(records, RunConfig(data={"decoder": "pyav"}), train=True)
    ds = VideoDataset(records, RunConfig(data={"decoder": "decord"}), train=True)
    t = ds.train_transform
    ds.train_transform = TodayTransform(t.size, t.short_side, t.crop_area, t.crop_aspect, t.flip_p, t.grayscale_p,
                                        CLIP_MEAN, CLIP_STD)
    return ds


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_train_clips_per_second_per_core(benchmark, inputs, kind, path, capsys):
    ds = _dataset(inputs[kind], path)
    cpu: list[float] = []

    def rounds() -> None:
        start = time.process_time()
        for k in range(CLIPS_PER_ROUND):
            item = ds[k % len(ds)]
            assert not isinstance(item, BadItem) and item.clip.shape == (FRAMES, 3, 224, 224)
        cpu.append(time.process_time() - start)

    benchmark.pedantic(rounds, rounds=ROUNDS, warmup_rounds=1)
    per_core = CLIPS_PER_ROUND * ROUNDS / sum(cpu[-ROUNDS:])
    wall = CLIPS_PER_ROUND / benchmark.stats.stats.mean
    PER_CORE[kind, path] = (per_core, wall)
    benchmark.extra_info.update({"clips_per_s_per_core": round(per_core, 2), "clips_per_s_wall": round(wall, 2)})
    if len(PER_CORE) == len(KINDS) * len(PATHS):
        lines = ["", "[data] train clips (8x224², Table A.1 augmentation): clips/s per core (wall in brackets)",
                 f"  {'input':<10}{'today (decord)':>18}{'now (pyav sparse)':>20}{'per core':>10}"]
        for k in KINDS:
            (a, aw), (b, bw) = PER_CORE[k, "today"], PER_CORE[k, "now"]
            lines.append(f"  {k:<10}{a:>9.1f} ({aw:5.1f}){b:>11.1f} ({bw:5.1f}){b / a:>9.2f}x")
        lines.append("  goal: >= 40 clips/s per core on prepared videos and JPEG folders")
        with capsys.disabled():
            print("\n".join(lines))
