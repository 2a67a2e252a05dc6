import numpy as np
import pytest

from bike.world.config import COLOUR_RGB, world_config
from bike.world.generator import (
    Composition,
    all_compositions,
    make_video,
    pick_pair,
    split_compositions,
    video_rng,
)


@pytest.fixture(scope="module")
def cfg():
    return world_config("default", frames=24)


def test_class_names_are_plain_language():
    c = Composition("red", "ball", "rising")
    assert c.name == "red ball rising" and c.slug == "red_ball_rising"


def test_split_holds_out_new_combinations_of_seen_factors(cfg):
    seen, novel = split_compositions(cfg, seed=0)
    assert len(novel) == cfg.num_novel and len(seen) + len(novel) == cfg.num_compositions
    assert not set(seen) & set(novel)
    for key in (lambda c: (c.colour, c.shape), lambda c: (c.shape, c.motion), lambda c: (c.colour, c.motion)):
        assert {key(c) for c in novel} <= {key(c) for c in seen}
    assert split_compositions(cfg, seed=0) == (seen, novel)
    assert split_compositions(cfg, seed=1)[1] != novel


def test_impossible_split_is_an_error():
    with pytest.raises(ValueError, match="num_novel"):
        world_config("default", num_novel=1000)


def test_video_is_deterministic_and_shaped(cfg):
    comp = all_compositions(cfg)[0]
    a, ia = make_video(video_rng(0, 1, 5), cfg, [comp])
    b, ib = make_video(video_rng(0, 1, 5), cfg, [comp])
    c, _ = make_video(video_rng(0, 1, 6), cfg, [comp])
    assert a.shape == (24, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert ia == ib and not np.array_equal(a, c)


def _colour_pixels(frames, rgb, tol=45):
    d = np.abs(frames.astype(int) - np.asarray(rgb)[None, None, None]).max(-1)
    return (d < tol).sum(axis=(1, 2))


@pytest.mark.parametrize("motion", ["rising", "falling", "sliding", "shaking", "growing", "shrinking"])
def test_action_occupies_its_window_only(cfg, motion):
    """Without still objects or distractors, frames outside the window carry no evidence of the class."""
    bare = world_config("default", frames=24, still_outside_p=0.0, distractor_p=0.0)
    comp = Composition("red", "square", motion)
    frames, (inst,) = make_video(video_rng(0, 9, 1), bare, [comp])
    lo, hi = bare.window
    assert round(lo * 24) <= inst.end - inst.start <= round(hi * 24)
    px = _colour_pixels(frames, COLOUR_RGB["red"])
    inside = np.zeros(24, bool)
    inside[inst.start:inst.end] = True
    assert (px[inside] > 0).all() and (px[~inside] == 0).all()


def test_motion_moves_the_object(cfg):
    bare = world_config("default", frames=24, still_outside_p=0.0, distractor_p=0.0, noise_std=0.0)
    frames, (inst,) = make_video(video_rng(0, 9, 2), bare, [Composition("blue", "ball", "rising")])
    masks = np.abs(frames.astype(int) - np.asarray(COLOUR_RGB["blue"])).max(-1) < 20  # [T, H, W]
    ys = [np.argwhere(m)[:, 0].mean() for m in masks[inst.start:inst.end]]
    assert ys[-1] < ys[0] - 8  # rising: y decreases (image y points down)


def test_two_action_video(cfg):
    comps = all_compositions(cfg)
    rng = video_rng(0, 5, 0)
    pair = pick_pair(rng, comps)
    assert pair[0] != pair[1] and (pair[0].colour, pair[0].shape) != (pair[1].colour, pair[1].shape)
    frames, insts = make_video(rng, cfg, pair)
    assert [i.composition for i in insts] == list(pair)
    with pytest.raises(ValueError, match="1 or 2"):
        make_video(rng, cfg, [])


def test_trail_p_draws_some_actions_without_their_motion_trail():
    """``trail_p`` < 1: a share of the actions shows its motion only across frames (no trail in any
    frame); at the default 1 every action keeps its trail and no extra random draw is made."""
    from bike.world.generator import action_slot
    from bike.world.render import TRAIL_NONE

    comp = Composition("red", "square", "rising")
    box = (0.0, 64.0, 0.0, 64.0)
    base = world_config("default", frames=24, still_outside_p=0.0)

    def slot(cfg, i):
        rng = video_rng(0, 9, i)
        s, inst = action_slot(rng, cfg, comp, box)
        return s, inst, rng.random()  # the next draw: equal when no extra draw was made

    with_trail = [slot(base, i) for i in range(40)]
    assert all((s.trail[i.start:i.end] != TRAIL_NONE).all() for s, i, _ in with_trail)
    for p, low, high in ((0.0, 0, 0), (0.5, 8, 32), (1.0, 40, 40)):
        got = [slot(world_config("default", frames=24, still_outside_p=0.0, trail_p=p), i) for i in range(40)]
        kept = sum(bool((s.trail[i.start:i.end] != TRAIL_NONE).all()) for s, i, _ in got)
        assert low <= kept <= high
        none = [s for s, i, _ in got if (s.trail[i.start:i.end] == TRAIL_NONE).all()]
        assert len(none) == 40 - kept  # a trail is drawn for the whole action or not at all
        for (a, ia, _), (b, ib, _) in zip(with_trail, got):  # the motion itself is the same
            assert ia == ib and np.array_equal(a.cy, b.cy) and np.array_equal(a.r, b.r)
        assert ([n for *_, n in got] == [n for *_, n in with_trail]) == (p == 1.0)
    with pytest.raises(ValueError, match="trail_p"):
        world_config("default", trail_p=1.5)


def test_landscape_frames_keep_the_action_in_the_centred_square():
    """``width``: frames are ``size`` x ``width``; the action's object stays inside the centred square
    (so the side strips show background, sometimes a distractor); the background's texture spans the
    whole width; 0 keeps square frames."""
    comp = Composition("red", "ball", "growing")  # no trail spilling past its box (it grows by 1/4 of its radius)
    square = world_config("default", frames=24, distractor_p=0.0)
    wide = world_config("default", frames=24, distractor_p=0.0, width=96)
    assert square.frame_width == 64 and wide.frame_width == 96
    red = np.asarray(COLOUR_RGB["red"], np.float32)
    for i in range(12):
        frames, _ = make_video(video_rng(0, 0, i), wide, [comp])
        assert frames.shape == (24, 64, 96, 3)
        reddish = np.abs(frames.astype(np.float32) - red).sum(-1) < 60  # [T, H, W]
        cols = np.flatnonzero(reddish.any(axis=(0, 1)))
        assert cols.size and cols.min() >= 16 - 5 and cols.max() < 80 + 5  # the square is x in [16, 80)
        assert frames[:, :, :8].std() > 0 and frames[:, :, -8:].std() > 0  # textured strips, not padding
        assert make_video(video_rng(0, 0, i), square, [comp])[0].shape == (24, 64, 64, 3)
    for bad in (72, 48):
        with pytest.raises(ValueError, match="width"):
            world_config("default", width=bad)
