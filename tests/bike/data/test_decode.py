import pickle

import av
import numpy as np
import pytest
from PIL import Image

from bike.data import decode
from bike.data.decode import BACKENDS, BadVideoError, decode_frames, num_frames, open_video, sample_and_decode
from bike.data.lists import VideoRecord
from bike.data.video_io import write_mp4

T, H, W = 40, 32, 64
STEP = 6  # frame t has pixel value t * STEP in every channel of its left half


def indexed_frames(n=T, h=H, w=W):
    """Frame t encodes t in its pixels (left half t*STEP, right half 255 - t*STEP)."""
    f = np.zeros((n, h, w, 3), np.uint8)
    for t in range(n):
        f[t, :, : w // 2] = t * STEP
        f[t, :, w // 2 :] = 255 - t * STEP
    return f


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    frames = indexed_frames()
    lossless = write_mp4(d / "lossless.mp4", frames, fps=10, lossless=True)
    lossy = write_mp4(d / "lossy.mp4", frames, fps=10)
    return {"dir": d, "frames": frames, "lossless": str(lossless), "lossy": str(lossy)}


def rec(path, **kw):
    return VideoRecord(path=str(path), label=0, video_id=str(path), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_returns_exactly_the_requested_frames(videos, backend):
    idx = [0, 3, 17, 17, 39, 5]
    got = decode_frames(rec(videos["lossless"]), idx, backend)
    assert got.dtype == np.uint8 and got.shape == (len(idx), H, W, 3)
    np.testing.assert_array_equal(got, videos["frames"][idx])
    assert num_frames(rec(videos["lossless"]), backend) == T


def test_pyav_seek_equals_straight_decoding_on_lossy_video(videos):
    idx = [1, 13, 14, 26, 38]  # keyframes every 12 frames: both inside and across GOPs
    straight = decode_frames(rec(videos["lossy"]), idx, "pyav")
    seek = decode_frames(rec(videos["lossy"]), idx, "pyav_seek")
    np.testing.assert_array_equal(seek, straight)
    dec = decode_frames(rec(videos["lossy"]), idx, "decord")
    assert np.abs(dec.astype(int) - videos["frames"][idx].astype(int)).max() <= 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_trimmed_record_maps_seconds_to_frames(videos, backend):
    r = rec(videos["lossless"], start=1.25, end=2.0)  # 10 fps: frames 12..19
    assert num_frames(r, backend) == 8
    got = decode_frames(r, [0, 7], backend)
    np.testing.assert_array_equal(got, videos["frames"][[12, 19]])
    clamped = rec(videos["lossless"], start=3.0, end=99.0)  # end past the video: clamped
    assert num_frames(clamped, backend) == T - 30
    with pytest.raises(BadVideoError, match="after the video's last frame"):
        num_frames(rec(videos["lossless"], start=5.0, end=6.0), backend)


def test_out_of_window_index_is_a_programming_error(videos):
    with pytest.raises(ValueError, match=r"outside 0..39"):
        decode_frames(rec(videos["lossless"]), [40])


def make_frame_dir(path, n, template="img_{:05d}.png"):
    path.mkdir(parents=True, exist_ok=True)
    frames = indexed_frames(n)
    for t in range(n):
        Image.fromarray(frames[t]).save(path / template.format(t + 1))
    return frames


def test_frame_directory_is_read_one_based(tmp_path):
    frames = make_frame_dir(tmp_path / "v", 12)
    r = VideoRecord(str(tmp_path / "v"), 1, "v", num_frames=12)
    got = decode_frames(r, [0, 11, 4], frame_template="img_{:05d}.png")
    np.testing.assert_array_equal(got, frames[[0, 11, 4]])
    assert num_frames(r, frame_template="img_{:05d}.png") == 12


def test_frame_directory_shorter_than_listed_is_bad(tmp_path):
    make_frame_dir(tmp_path / "v", 9)
    r = VideoRecord(str(tmp_path / "v"), 1, "v", num_frames=12)
    with pytest.raises(BadVideoError, match=r"has 9 frame\(s\), fewer than the 12 listed"):
        decode_frames(r, [0], frame_template="img_{:05d}.png")
    missing = VideoRecord(str(tmp_path / "gone"), 1, "gone", num_frames=12)
    with pytest.raises(BadVideoError, match="frame directory not found"):
        decode_frames(missing, [0])


def faststart_copy(src, dst):
    """Remux with the index (moov) first, so a cut file still opens and fails while decoding."""
    with av.open(src) as i, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as o:
        s = i.streams.video[0]
        out = o.add_stream_from_template(s)
        for p in i.demux(s):
            if p.dts is None:
                continue
            p.stream = out
            o.mux(p)
    return dst


@pytest.fixture(scope="module")
def bad_files(videos):
    d = videos["dir"]
    data = open(videos["lossless"], "rb").read()
    (d / "zero.mp4").write_bytes(b"")
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    fs = faststart_copy(videos["lossless"], d / "fs.mp4").read_bytes()
    (d / "fs_cut.mp4").write_bytes(fs[: int(len(fs) * 0.6)])
    return {
        "missing": (str(d / "missing.mp4"), "file not found"),
        "zero": (str(d / "zero.mp4"), "zero-length file"),
        "cut": (str(d / "cut.mp4"), "cannot be opened"),
        "garbage": (str(d / "garbage.mp4"), "cannot be opened"),
        "fs_cut": (str(d / "fs_cut.mp4"), r"cannot be opened|decoding|truncated"),
    }


@pytest.mark.parametrize("kind", ["missing", "zero", "cut", "garbage", "fs_cut"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_videos_raise_bad_video_error(bad_files, kind, backend):
    path, reason = bad_files[kind]
    with pytest.raises(BadVideoError, match=reason) as info:
        decode_frames(rec(path), [0, 30], backend)
    assert info.value.path == path
    assert path not in decode.decoder_fallbacks()  # real damage is never a decoder fallback


def test_bad_video_error_survives_pickling():
    err = pickle.loads(pickle.dumps(BadVideoError("/x.mp4", "zero-length file")))
    assert (err.path, err.reason, str(err)) == ("/x.mp4", "zero-length file", "/x.mp4: zero-length file")


def test_known_decord_bug_falls_back_to_pyav_and_is_recorded(tmp_path):
    # decord 0.6 cannot copy out 48-px-wide frames (see bike.data.video_io); PyAV can.
    frames = indexed_frames(10, 32, 48)
    path = str(write_mp4(tmp_path / "w48.mp4", frames, lossless=True))
    frames_got, idx, src = sample_and_decode(rec(path), lambda n: np.array([1, 8]), "decord")
    np.testing.assert_array_equal(frames_got, frames[[1, 8]])
    assert src.fallback_reason and "DECORDArrayCopyFromTo" in src.fallback_reason
    assert path in decode.decoder_fallbacks()


def test_open_video_rejects_unknown_backend(videos):
    with pytest.raises(ValueError, match="expected one of"):
        open_video(rec(videos["lossless"]), "ffmpeg")


@pytest.fixture(scope="module")
def bframe_video(tmp_path_factory):
    """A lossy 96-frame video with moving content and noise: B-frames (decoding order != time order)."""
    rng = np.random.default_rng(3)
    n, h, w = 96, 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        f = np.stack([(xx * 4 + 5 * t) % 256, (yy * 5 + 3 * t) % 256, (xx + yy + 7 * t) % 256], -1).astype(np.int16)
        f += rng.integers(-8, 9, f.shape, dtype=np.int16)
        frames[t] = np.clip(f, 0, 255)
    path = str(write_mp4(tmp_path_factory.mktemp("bframes") / "b.mp4", frames, fps=25))
    with av.open(path) as c:
        pts = [p.pts for p in c.demux(video=0) if p.size]
    assert pts != sorted(pts), "the test video needs B-frames"
    return path


def straight_frames(record, idx):
    with decode.PyAVSource(record, sparse=False) as src:
        return src.read(idx)


@pytest.mark.parametrize(
    "idx",
    [[0], [95], [3, 40, 41, 77, 95], [50, 2, 50, 13, 90, 1], list(range(0, 96, 12)), list(range(5, 96, 11)), [11, 12, 13, 23, 24]],
)
def test_sparse_pyav_equals_straight_decoding_without_falling_back(bframe_video, idx, monkeypatch):
    expected = straight_frames(rec(bframe_video), idx)
    expected_trimmed = straight_frames(rec(bframe_video), [12, 42, 74])

    def no_fallback(self, wanted):
        raise AssertionError("the sparse reader fell back to straight decoding")

    monkeypatch.setattr(decode.PyAVSource, "_read_straight", no_fallback)
    got = decode_frames(rec(bframe_video), idx, "pyav")
    np.testing.assert_array_equal(got, expected)
    trimmed = rec(bframe_video, start=0.5, end=3.0)  # 25 fps: frames 12..74
    np.testing.assert_array_equal(decode_frames(trimmed, [0, 30, 62], "pyav"), expected_trimmed)


def test_sparse_pyav_skips_unwanted_non_reference_frames(bframe_video, monkeypatch):
    """Unwanted packets are sent with skip_frame=NONREF, wanted ones in full (H.264), and far fewer
    packets than the video has reach the decoder."""
    from av.video.codeccontext import VideoCodecContext

    modes = []
    orig = VideoCodecContext.decode

    def recording(ctx, packet=None):
        if packet is not None:
            modes.append(str(ctx.skip_frame))
        return orig(ctx, packet)

    try:
        monkeypatch.setattr(VideoCodecContext, "decode", recording)
    except TypeError:
        pytest.skip("this PyAV's codec context cannot be wrapped")
    decode_frames(rec(bframe_video), [30, 70], "pyav")
    assert any("NONREF" in m for m in modes) and sum("DEFAULT" in m for m in modes) >= 2
    assert len(modes) < 96 // 2


def test_sparse_pyav_falls_back_to_straight_decoding_when_packets_cannot_be_indexed(bframe_video, monkeypatch):
    idx = [4, 60, 33]
    expected = straight_frames(rec(bframe_video), idx)
    monkeypatch.setattr(decode.PyAVSource, "_demux", lambda self: None)
    np.testing.assert_array_equal(decode_frames(rec(bframe_video), idx, "pyav"), expected)


def test_pyav_and_decord_decode_the_same_pixels(bframe_video):
    idx = [0, 17, 18, 49, 95]
    np.testing.assert_array_equal(decode_frames(rec(bframe_video), idx, "pyav"), decode_frames(rec(bframe_video), idx, "decord"))
