import math

import numpy as np
import pytest
import torch

from bike.config import RunConfig
from bike.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    TestTransform,
    TrainTransform,
    centre_crop_box,
    grayscale,
    normalize,
    random_sized_crop_box,
    short_side_size,
    test_transform,
    three_crop_boxes,
    train_transform,
)


def denorm(x):
    """[T,3,S,S] normalised -> 0..255."""
    m = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x * s + m) * 255.0


def test_normalize_matches_clip_constants():
    x = torch.full((1, 3, 2, 2), 255.0)
    y = normalize(x)
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(y[0, :, 0, 0], expected)


def test_short_side_size():
    assert short_side_size(240, 320, 256) == (256, 341)
    assert short_side_size(320, 240, 256) == (341, 256)
    assert short_side_size(224, 224, 336) == (336, 336)


def test_test_transform_shapes_and_centre_crop_content():
    # a frame whose columns encode their x position: the centre crop must hold the middle columns
    w, h = 128, 64
    cols = np.linspace(0, 255, w).astype(np.uint8)
    frames = np.broadcast_to(cols[None, None, :, None], (3, h, w, 3)).copy()
    out = TestTransform(size=32, short_side=64)(frames)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    px = denorm(out)[0, 0, 0]  # first row of channel 0
    np.testing.assert_allclose(px.numpy(), cols[48:80].astype(np.float32), atol=0.5)


def _released_full_res_offsets(image_w: int, image_h: int, crop: int) -> list[tuple[int, int]]:
    """TSN ``GroupFullResSample.__call__`` of the released code, without flips: (x, y) offsets in its
    order left, right, centre."""
    w_step = (image_w - crop) // 4
    h_step = (image_h - crop) // 4
    return [(0 * w_step, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 2 * h_step)]


@pytest.mark.parametrize("h,w,crop", [(256, 341, 224), (256, 455, 224), (336, 448, 336), (64, 85, 56), (224, 224, 224)])
def test_three_crops_follow_the_released_layout(h, w, crop):
    boxes = three_crop_boxes(h, w, crop)
    ref = _released_full_res_offsets(w, h, crop)
    assert [(boxes[k][1], boxes[k][0]) for k in ("left", "right", "centre")] == ref
    assert all(b[2:] == (crop, crop) for b in boxes.values())


def test_three_crops_of_portrait_frames_swap_the_axes():
    boxes = three_crop_boxes(341, 256, 224)  # h_step 29, w_step 8
    assert boxes == {"left": (0, 16, 224, 224), "right": (116, 16, 224, 224), "centre": (58, 16, 224, 224)}
    assert centre_crop_box(256, 341, 224) == (16, 58, 224, 224)
    frames = np.zeros((2, 64, 128, 3), np.uint8)
    frames[..., :64, :] = 200  # left half bright
    left = denorm(TestTransform(32, 64, "left", crops=3)(frames))
    right = denorm(TestTransform(32, 64, "right", crops=3)(frames))
    assert left.mean() > 190 and right.mean() < 10


def test_random_sized_crop_box_respects_area_and_aspect():
    g = torch.Generator().manual_seed(0)
    h, w = 256, 341
    for _ in range(200):
        top, left, bh, bw = random_sized_crop_box(h, w, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
        if bh != min(h, w) or bw != min(h, w):  # not the fallback square
            assert 0.08 * h * w * 0.95 <= bh * bw <= h * w
            assert 3 / 4 * 0.95 <= bw / bh <= 4 / 3 * 1.05
    # an impossible area forces the fallback: a short-side square placed along the long side
    top, left, bh, bw = random_sized_crop_box(h, w, (2.0, 3.0), (1.0, 1.0), g)
    assert (bh, bw, top) == (256, 256, 0) and 0 <= left <= w - 256


def test_train_transform_one_draw_per_clip():
    # All frames identical -> all outputs identical (the same crop/flip/gray for every frame).
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    clip = np.repeat(frame[None], 5, axis=0)
    tf = TrainTransform(size=32, short_side=48, grayscale_p=0.5)
    for seed in range(10):
        out = tf(clip, torch.Generator().manual_seed(seed))
        assert out.shape == (5, 3, 32, 32)
        assert torch.equal(out, out[:1].expand_as(out))


def test_train_transform_is_reproducible_and_varies_with_the_seed():
    clip = np.random.default_rng(1).integers(0, 256, (4, 48, 80, 3), dtype=np.uint8)
    tf = TrainTransform(size=32, short_side=48)
    a = tf(clip, torch.Generator().manual_seed(5))
    b = tf(clip, torch.Generator().manual_seed(5))
    c = tf(clip, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_and_grayscale_probabilities_are_applied():
    clip = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    full = dict(size=32, short_side=32, crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0))
    plain = TrainTransform(**full, flip_p=0.0, grayscale_p=0.0)(clip, torch.Generator().manual_seed(0))
    flipped = TrainTransform(**full, flip_p=1.0, grayscale_p=0.0)(clip, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped, plain.flip(-1))
    gray = denorm(TrainTransform(**full, flip_p=0.0, grayscale_p=1.0)(clip, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(gray[:, 0], gray[:, 1], atol=1e-3, rtol=0)
    torch.testing.assert_close(gray, grayscale(denorm(plain).round()).round(), atol=1e-3, rtol=0)  # PIL-like rounding
    flips = sum(
        int(params["flip"])
        for params in (TrainTransform(**full).draw(32, 32, torch.Generator().manual_seed(s)) for s in range(400))
    )
    assert abs(flips / 400 - 0.5) < 0.1


def test_transforms_from_run_config():
    cfg = RunConfig(model={"resolution": 336}, train={"flip_p": 0.25, "crop_area": (0.5, 1.0)})
    tf = train_transform(cfg)
    assert (tf.size, tf.short_side, tf.flip_p, tf.crop_area, tf.grayscale_p) == (336, 336, 0.25, (0.5, 1.0), 0.2)
    te = test_transform(RunConfig(), "right", crops=3)
    assert (te.size, te.short_side, te.position, te.crops) == (224, 256, "right", 3)
    with pytest.raises(ValueError, match="crop position 'left' with 1 crop"):
        TestTransform(size=16, short_side=16, position="left")(np.zeros((1, 16, 16, 3), np.uint8))
    assert math.isclose(cfg.train.crop_aspect[0], 3 / 4)


# ---------------------------------------------------------------------------------------------------
# The fast grayscale / normalisation (issue #17) against the formulas they replaced, written out here:
# bit for bit, so the embedded world's clips (and the smoke table) are unchanged.
def reference_grayscale(x):
    w = torch.tensor((0.299, 0.587, 0.114), dtype=torch.float32).view(1, 3, 1, 1)
    y = (x.to(torch.float32) * w).sum(dim=1, keepdim=True)
    if x.dtype == torch.uint8:
        y = y.round_().clamp_(0, 255.0).to(torch.uint8)
    return y.expand(-1, 3, -1, -1)


def reference_normalize(x):
    m = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    inv_s = 1.0 / (torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
    return x.contiguous().to(torch.float32, copy=True).sub_(m).mul_(inv_s)


def reference_train_transform(tf, frames, generator):
    """Table A.1 train augmentation step by step: short-side resize, crop, resize, flip, gray, normalise."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    h, w = short_side_size(x.shape[-2], x.shape[-1], tf.short_side)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    params = tf.draw(h, w, generator)
    top, left, bh, bw = params["box"]
    x = torch.nn.functional.interpolate(
        x[..., top : top + bh, left : left + bw], size=(tf.size, tf.size), mode="bicubic", align_corners=False, antialias=True
    )
    if params["flip"]:
        x = x.flip(-1)
    if params["gray"]:
        x = reference_grayscale(x)
    return reference_normalize(x)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_grayscale_equals_the_summed_formula_for_every_colour(layout):
    v = torch.arange(256, dtype=torch.uint8)
    for red in torch.arange(256, dtype=torch.uint8).split(64):  # all 2^24 colours, a quarter at a time
        r, g, b = torch.meshgrid(red, v, v, indexing="ij")
        x = torch.stack([r, g, b]).reshape(1, 3, 64 * 16, 4096)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(grayscale(x), reference_grayscale(x))
    f = torch.rand(2, 3, 5, 7) * 255
    assert torch.equal(grayscale(f), reference_grayscale(f))


def test_normalize_equals_the_reference_and_leaves_its_input_alone():
    u8 = torch.randint(0, 256, (3, 20, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for x in (u8.permute(0, 3, 1, 2), u8.permute(0, 3, 1, 2)[:, :1].expand(-1, 3, -1, -1), u8.permute(0, 3, 1, 2).float()):
        before = x.clone()
        y = normalize(x)
        assert y.is_contiguous() and y.dtype == torch.float32
        assert torch.equal(y, reference_normalize(x)) and torch.equal(x, before)


@pytest.mark.parametrize("shape,size,short", [((8, 240, 320, 3), 224, 256), ((8, 64, 64, 3), 64, 73), ((4, 90, 60, 3), 32, 36)])
def test_train_transform_equals_the_step_by_step_reference(shape, size, short):
    frames = np.random.default_rng(7).integers(0, 256, shape, dtype=np.uint8)
    tf = TrainTransform(size=size, short_side=short, grayscale_p=0.5)
    for seed in range(12):
        got = tf(frames, torch.Generator().manual_seed(seed))
        assert torch.equal(got, reference_train_transform(tf, frames, torch.Generator().manual_seed(seed)))
