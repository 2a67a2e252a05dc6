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
