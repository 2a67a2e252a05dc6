"""``bikebench data prepare`` throughput: videos/s per core, prepared vs the plain re-encode.

Run: ``python -m pytest -q benchmarks/test_bench_prepare.py --benchmark-enable --benchmark-only``

Both re-encode the same synthetic videos (480x360, 3 s at 25 fps) to the recipe's short side 320 in
this process. *Prepared* is ``harness.dataprepare``'s setting (x264 veryfast, one thread, a keyframe
every 8 frames, no scene cuts); *plain* is x264's defaults (preset medium, keyframes every 250
frames, every core). Per core = videos / CPU seconds of this process (all its threads), so a
multi-threaded encoder is not flattered by the cores it used. Each output's sparse access (8 TSN
test frames with decord, the run's decoder) is timed too: what the keyframe interval buys.
"""

from __future__ import annotations

import time

import pytest

from bike.data.decode import decode_frames
from bike.data.lists import VideoRecord
from bike.data.sampling import tsn_test_indices
from bike.data.video_io import write_mp4
from harness.dataprepare import PLAIN, PrepareSettings, encode_one, find_videos, output_name
from test_bench_data import synthetic_video  # the benchmarks' one synthetic video (benchmarks/ is on sys.path)

SECONDS, FPS, HEIGHT, WIDTH, NUM_VIDEOS = 3, 25, 360, 480, 3
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = tmp_path_factory.mktemp("prepare_src")
    for i in range(NUM_VIDEOS):
        write_mp4(src / f"v{i}.mp4", synthetic_video(i, SECONDS, FPS, HEIGHT, WIDTH), fps=FPS)
    decode_frames(VideoRecord(path=str(src / "v0.mp4"), label=0, video_id="v0"), [0], backend="decord")  # warm decord
    return src


def _encode_all(src, dst, settings) -> dict[str, float]:
    videos = find_videos(src)
    wall, cpu = time.perf_counter(), time.process_time()
    for rel in videos:
        assert encode_one(str(src / rel), str(dst / output_name(rel)), settings) is None
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sparse = time.perf_counter()
    for rel in videos:
        rec = VideoRecord(path=str(dst / output_name(rel)), label=0, video_id=rel)
        decode_frames(rec, tsn_test_indices(SECONDS * FPS, 8), backend="decord")
    sparse = (time.perf_counter() - sparse) / len(videos)
    return {"videos_per_s": len(videos) / wall, "videos_per_cpu_s": len(videos) / cpu, "sparse_8_frames_ms": 1e3 * sparse}


@pytest.mark.parametrize("kind", ["prepared", "plain"])
def test_bench_prepare(benchmark, source, tmp_path, kind) -> None:
    settings = PrepareSettings() if kind == "prepared" else PLAIN
    figures = benchmark.pedantic(lambda: _encode_all(source, tmp_path / kind, settings), rounds=1, iterations=1)
    RESULTS[kind] = figures
    benchmark.extra_info.update({k: round(v, 3) for k, v in figures.items()})
    if len(RESULTS) == 2:
        ratio = RESULTS["prepared"]["videos_per_cpu_s"] / RESULTS["plain"]["videos_per_cpu_s"]
        benchmark.extra_info["per_core_vs_plain"] = round(ratio, 2)
        print(f"\ndata prepare: {RESULTS['prepared']['videos_per_cpu_s']:.2f} videos/s per core vs plain "
              f"{RESULTS['plain']['videos_per_cpu_s']:.2f} ({ratio:.2f}x); sparse 8-frame read "
              f"{RESULTS['prepared']['sparse_8_frames_ms']:.1f} ms vs {RESULTS['plain']['sparse_8_frames_ms']:.1f} ms")
