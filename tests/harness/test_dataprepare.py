"""``bikebench data prepare`` (harness.dataprepare): short side, keyframe interval, source untouched, resumable."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from bike.data.video_io import write_mp4
from harness.cli import main
from harness.dataprepare import MANIFEST, PrepareSettings, prepare

FRAMES = 20


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _stream(path: Path) -> tuple[int, int, list[int]]:
    """(width, height, indices of the keyframes) of a video's first stream, read with PyAV."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        packets = sorted((p for p in c.demux(s) if p.size), key=lambda p: p.pts)  # display order
        keys = [i for i, p in enumerate(packets) if p.is_keyframe]
        return s.codec_context.width, s.codec_context.height, keys


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    write_mp4(src / "a/landscape.mp4", rng.integers(0, 255, (FRAMES, 64, 96, 3), dtype=np.uint8))
    write_mp4(src / "a/portrait.mp4", rng.integers(0, 255, (FRAMES, 96, 64, 3), dtype=np.uint8))
    write_mp4(src / "b/square.mp4", rng.integers(0, 255, (FRAMES, 64, 64, 3), dtype=np.uint8))
    (src / "notes.txt").write_text("not a video")
    return src


def test_short_side_keyframes_and_the_source_untouched(source, tmp_path) -> None:
    before = _digest(source)
    dst = tmp_path / "dst"
    report = prepare(source, dst, PrepareSettings(short_side=48, keyint=5), executor="inline", tasks=2)
    assert (report.videos, report.encoded, report.skipped, report.failed) == (3, 3, 0, {})
    assert _stream(dst / "a/landscape.mp4") == (72, 48, [0, 5, 10, 15])
    assert _stream(dst / "a/portrait.mp4")[:2] == (48, 72)
    assert _stream(dst / "b/square.mp4")[:2] == (48, 48)
    assert _digest(source) == before
    # the default recipe: short side 320
    default = prepare(source / "b", tmp_path / "d320", executor="inline")
    assert default.encoded == 1 and _stream(tmp_path / "d320/square.mp4")[:2] == (320, 320)


def test_a_rerun_skips_done_files_and_redoes_a_partial_one(source, tmp_path) -> None:
    dst = tmp_path / "dst"
    settings = PrepareSettings(short_side=32, keyint=4)
    prepare(source, dst, settings, executor="local", tasks=2, poll_s=0.2)
    done = _digest(dst)
    again = prepare(source, dst, settings, executor="inline")
    assert (again.encoded, again.skipped) == (0, 3)
    assert {k: v for k, v in _digest(dst).items() if not k.startswith(".")} == \
        {k: v for k, v in done.items() if not k.startswith(".")}
    # an interrupted encode: a partial file under the final name, a temporary sibling left behind
    whole = (dst / "a/portrait.mp4").read_bytes()
    (dst / "a/portrait.mp4").write_bytes(whole[: len(whole) // 3])
    (dst / "a/.portrait.mp4.dead.tmp.mp4").write_bytes(b"partial")
    third = prepare(source, dst, settings, executor="inline")
    assert (third.encoded, third.skipped) == (1, 2)
    assert _stream(dst / "a/portrait.mp4") == (32, 48, [0, 4, 8, 12, 16])
    assert not list(dst.rglob("*.tmp.mp4"))
    # other settings redo everything
    assert prepare(source, dst, PrepareSettings(short_side=32, keyint=8), executor="inline").encoded == 3
    assert (dst / MANIFEST).is_file()


def test_cli_refuses_to_write_into_the_source_and_reports_bad_sources(source, tmp_path, capsys) -> None:
    assert main(["data", "prepare", str(source), str(source / "out")]) == 2
    assert "inside it" in capsys.readouterr().err
    assert main(["data", "prepare", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (source / "b/broken.mp4").write_text("text, not a video")
    code = main(["data", "prepare", str(source), str(tmp_path / "out"), "--short-side", "32", "--executor", "debug"])
    out = capsys.readouterr().out
    assert code == 1 and "3 re-encoded" in out and "failed b/broken.mp4" in out
    assert not (tmp_path / "out/b/broken.mp4").exists() and os.path.isfile(tmp_path / "out/b/square.mp4")
