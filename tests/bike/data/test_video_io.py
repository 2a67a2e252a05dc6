import decord
import numpy as np
import pytest

from bike.data.video_io import write_mp4


def test_lossless_mp4_decodes_exactly(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 64, 3), dtype=np.uint8)
    path = write_mp4(tmp_path / "v.mp4", frames, lossless=True)
    reader = decord.VideoReader(str(path), num_threads=1)
    assert len(reader) == 12
    got = reader.get_batch([0, 7, 11]).asnumpy()
    np.testing.assert_array_equal(got, frames[[0, 7, 11]])


def test_lossy_mp4_is_close_and_atomic(tmp_path):
    frames = np.full((6, 32, 32, 3), 128, dtype=np.uint8)
    path = write_mp4(tmp_path / "sub" / "v.mp4", frames)
    assert path.exists() and not list(path.parent.glob(".*tmp*"))
    got = decord.VideoReader(str(path), num_threads=1).get_batch([3]).asnumpy()
    assert np.abs(got.astype(int) - 128).max() <= 3


@pytest.mark.parametrize("shape", [(0, 16, 16, 3), (4, 15, 16, 3), (4, 16, 16)])
def test_rejects_bad_frames(tmp_path, shape):
    with pytest.raises(ValueError, match="v.mp4"):
        write_mp4(tmp_path / "v.mp4", np.zeros(shape, dtype=np.uint8))


def _moving_clip(seed: int) -> np.ndarray:
    """A textured square moving over a noisy background: ``[32, 64, 64, 3]`` uint8 (like a world video)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 90, (64, 64, 3), dtype=np.uint8)
    patch = rng.integers(150, 255, (14, 14, 3), dtype=np.uint8)
    frames = np.repeat(background[None], 32, axis=0)
    for t in range(32):
        y, x = 4 + t, 6 + (t * 5) % 40
        frames[t, y : y + 14, x : x + 14] = patch
    noise = rng.integers(0, 12, frames.shape, dtype=np.uint8)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("lossless", [False, True])
def test_same_frames_give_the_same_bytes(tmp_path, lossless):
    """A world rebuilt anywhere must hold the same videos (x264's mbtree broke this for lossy files)."""
    import hashlib

    for seed in range(3):
        clip = _moving_clip(seed)
        digests = {
            hashlib.sha256(write_mp4(tmp_path / f"{seed}_{i}.mp4", clip, lossless=lossless).read_bytes()).hexdigest()
            for i in range(6)
        }
        assert len(digests) == 1, f"clip {seed}: {len(digests)} different encodings of the same frames"
