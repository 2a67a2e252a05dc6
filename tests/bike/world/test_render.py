import numpy as np
import pytest

from bike.world.render import (
    SHAPE_IDS,
    TRAIL_GROW,
    TRAIL_NONE,
    TRAIL_SHRINK,
    TRAIL_TRANSLATE,
    ObjectSlot,
    _coverage,
    make_backgrounds,
    render,
    shape_sdf,
)

SIZE = 64


def _slot(n, shape="ball", rgb=(220, 40, 40), cx=32.0, cy=32.0, r=10.0, trail=TRAIL_NONE, tdx=0.0, tdy=0.0):
    s = ObjectSlot.empty(n)
    s.visible[:] = True
    s.shape[:] = SHAPE_IDS[shape]
    s.rgb[:] = rgb
    s.cx[:], s.cy[:], s.r[:] = cx, cy, r
    s.trail[:] = trail
    s.tdx[:], s.tdy[:] = tdx, tdy
    return s


def _flat(n=1, value=50.0):
    return np.full((n, SIZE, SIZE, 3), value, np.float32)


@pytest.mark.parametrize("shape", list(SHAPE_IDS))
def test_sdf_inside_at_centre_outside_far(shape):
    d = np.array([[[0.0, 30.0]]], np.float32)
    z = np.zeros_like(d)
    sdf = shape_sdf(SHAPE_IDS[shape], d, z, np.full((1, 1, 1), 8.0, np.float32))
    assert sdf[0, 0, 0] < 0 < sdf[0, 0, 1]


def test_shapes_differ():
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    masks = [(_coverage(shape_sdf(i, xs[None] - 32, ys[None] - 32, np.full((1, 1, 1), 12.0)), False) > 0.5)
             for i in SHAPE_IDS.values()]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).sum() > 30


def test_no_objects_and_no_noise_returns_background():
    bg = make_backgrounds(np.random.default_rng(0), 2, SIZE)
    out = render(bg, [ObjectSlot.empty(2)], np.random.default_rng(0), noise_std=0.0)
    np.testing.assert_array_equal(out, np.rint(bg).astype(np.uint8))


def test_object_colour_at_centre_and_background_far_away():
    out = render(_flat(), [_slot(1)], np.random.default_rng(0), noise_std=0.0)
    np.testing.assert_array_equal(out[0, 32, 32], [220, 40, 40])
    np.testing.assert_array_equal(out[0, 2, 2], [50, 50, 50])


def test_invisible_frames_are_not_drawn():
    slot = _slot(2)
    slot.visible[1] = False
    out = render(_flat(2), [slot], np.random.default_rng(0), noise_std=0.0)
    assert (out[1] == 50).all() and (out[0] != 50).any()


def test_translation_trail_lies_behind_the_motion():
    # rising: moving up (tdy < 0) leaves copies below the object, none above it
    out = render(_flat(), [_slot(1, r=8.0, trail=TRAIL_TRANSLATE, tdy=-4.0)], np.random.default_rng(0), 0.0)
    below, above = out[0, 32 + 8 + 3, 32], out[0, 32 - 8 - 3, 32]
    assert below[0] > 80 and (above == 50).all()


def test_grow_and_shrink_outlines():
    grow = render(_flat(), [_slot(1, r=12.0, trail=TRAIL_GROW)], np.random.default_rng(0), 0.0)[0]
    shrink = render(_flat(), [_slot(1, r=10.0, trail=TRAIL_SHRINK)], np.random.default_rng(0), 0.0)[0]
    plain = render(_flat(), [_slot(1, r=12.0)], np.random.default_rng(0), 0.0)[0]
    assert (grow[:, :, 0] < 150).sum() > (plain[:, :, 0] < 150).sum()  # dark rings inside the object
    assert shrink[32, 32 + 13, 0] > 60  # a ring outside the object's radius


def test_boxed_drawing_matches_full_frame_reference():
    rng = np.random.default_rng(3)
    n = 6
    slot = _slot(n, shape="triangle", rgb=(40, 180, 60))
    slot.cx[:] = rng.uniform(0, SIZE, n)  # some objects cross the border
    slot.cy[:] = rng.uniform(0, SIZE, n)
    slot.r[:] = rng.uniform(5, 16, n)
    out = render(_flat(n), [slot], rng, noise_std=0.0).astype(np.float32)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cov = _coverage(shape_sdf(SHAPE_IDS["triangle"], xs[None] - slot.cx[:, None, None], ys[None] - slot.cy[:, None, None],
                              slot.r[:, None, None]), False)[..., None]
    ref = 50 * (1 - cov) + np.array([40, 180, 60], np.float32) * cov
    assert np.abs(out - np.rint(ref)).max() <= 1


def test_render_rejects_mismatched_slots():
    with pytest.raises(ValueError, match="expected 2"):
        render(_flat(2), [ObjectSlot.empty(3)], np.random.default_rng(0))
