import numpy as np
import pytest
import torch

from bike.data.sampling import (
    clip_offsets,
    crop_positions,
    segment_starts,
    tsn_test_indices,
    tsn_train_indices,
    view_grid,
)


@pytest.mark.parametrize("make_gen", [lambda: np.random.default_rng(0), lambda: torch.Generator().manual_seed(0)])
def test_train_draws_one_frame_inside_each_segment(make_gen):
    n, t = 50, 8
    ticks = segment_starts(n, t)
    gen = make_gen()
    seen = [set() for _ in range(t)]
    for _ in range(300):
        idx = tsn_train_indices(n, t, gen)
        assert idx.shape == (t,) and idx.dtype == np.int64
        assert np.all(idx >= ticks[:-1]) and np.all(idx < ticks[1:])
        for i, v in enumerate(idx):
            seen[i].add(int(v))
    # every frame of every segment gets drawn: the draw is uniform over the segment, not fixed
    assert [sorted(s) for s in seen] == [list(range(ticks[i], ticks[i + 1])) for i in range(t)]


def test_train_is_reproducible_from_the_generator():
    a = tsn_train_indices(100, 8, torch.Generator().manual_seed(3))
    b = tsn_train_indices(100, 8, torch.Generator().manual_seed(3))
    c = tsn_train_indices(100, 8, torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_train_short_video_repeats_frames_but_uses_all():
    for n in (1, 3, 8):
        idx = tsn_train_indices(n, 8, np.random.default_rng(n))
        assert idx.shape == (8,) and set(idx.tolist()) == set(range(n)) and np.all(np.diff(idx) >= 0)


def test_single_view_first_and_centre():
    np.testing.assert_array_equal(tsn_test_indices(50, 8, "first"), [0, 6, 12, 18, 25, 31, 37, 43])
    # centre = floor(i * n / T + n / (2T)), n/T = 6.25
    np.testing.assert_array_equal(tsn_test_indices(50, 8, "centre"), [3, 9, 15, 21, 28, 34, 40, 46])
    np.testing.assert_array_equal(tsn_test_indices(5, 8, "first"), [0, 0, 1, 1, 2, 3, 3, 4])
    np.testing.assert_array_equal(tsn_test_indices(5, 8, "centre"), [0, 0, 1, 2, 2, 3, 4, 4])  # 0.3125 + 0.625 i


def test_multi_clip_offsets_spread_inside_the_first_segment():
    n, t, clips = 100, 8, 4  # n/T = 12.5 -> starts over [0, 11.5]: 0, 3.83, 7.67, 11.5 truncated
    np.testing.assert_array_equal(clip_offsets(n, t, clips), [0, 3, 7, 11])
    views = np.stack([tsn_test_indices(n, t, clip=c, clips=clips) for c in range(clips)])
    grid = np.arange(t) * n / t
    np.testing.assert_array_equal(views, np.floor(np.array([0, 3, 7, 11])[:, None] + grid[None, :]).astype(int))
    assert views.max() < n and np.all(views[:, 1:] > views[:, :-1])
    np.testing.assert_array_equal(views[0], tsn_test_indices(n, t, "first"))


def test_multi_clip_short_video_stays_in_range():
    for c in range(4):
        idx = tsn_test_indices(3, 8, clip=c, clips=4)
        assert idx.min() >= 0 and idx.max() <= 2


def test_invalid_arguments():
    with pytest.raises(ValueError, match="0 frames"):
        tsn_train_indices(0, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="clip index 4"):
        tsn_test_indices(10, 8, clip=4, clips=4)
    with pytest.raises(ValueError, match="'middle'"):
        tsn_test_indices(10, 8, "middle")
    with pytest.raises(ValueError, match="crops=2"):
        crop_positions(2)


def test_view_grid_order():
    assert view_grid(2, 3) == [(0, "left"), (0, "centre"), (0, "right"), (1, "left"), (1, "centre"), (1, "right")]
    assert view_grid(1, 1) == [(0, "centre")]
