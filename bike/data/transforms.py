"""Clip transforms of appendix Table A.1, on tensors, one clip (all its frames) at a time.

Input ``uint8 [T, H, W, 3]`` (NumPy or torch), output ``float32 [T, 3, S, S]`` normalised with CLIP's
mean/std. Frames stay uint8 (channels-last) through resizing, cropping, flipping and grayscale, as in
the authors' PIL pipeline, and become float only at the normalisation.

Train: resize the short side to ``short_side`` (bicubic, antialiased) -> random-sized crop (area share
uniform in ``crop_area``, aspect ratio uniform in ``crop_aspect``, w/h swapped with p = 1/2, as in the
authors' ``GroupRandomSizedCrop``) resized to ``S`` -> horizontal flip with ``flip_p`` -> grayscale
with ``grayscale_p``. ONE random draw per clip, applied to all its frames.

Test: resize the short side to ``short_side`` -> the centre ``S`` crop (1 crop), or the left / centre /
right crop of the authors' 3-crop layout (``GroupFullResSample``), no flip.

All resizes are bicubic (Table A.1); the authors' group transforms default to bilinear for the crop
resize — a difference of interpolation only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor]

#: CLIP's image normalisation (OpenAI CLIP preprocessing), RGB in [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: ITU-R BT.601 luma weights (what torchvision's / PIL's grayscale uses).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: Attempts at drawing a crop box inside the image before falling back to a random short-side square.
CROP_ATTEMPTS = 10
PIXEL_MAX = 255.0


def to_channels_first(frames: ArrayLike) -> torch.Tensor:
    """``uint8 [T, H, W, 3]`` -> ``uint8 [T, 3, H, W]`` (a channels-last view, no copy)."""
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (decoded video), got {x.dtype}")
    return x.permute(0, 3, 1, 2)


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) after resizing the short side to ``short_side``; the long side is truncated like torchvision."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``uint8 [T, 3, H, W]`` to ``size`` (uint8).

    torch's uint8 path (antialiased, rounding and clamping like PIL) matches PIL's ``BICUBIC`` — what
    the authors' PIL-based transforms used — to within 1-2 grey levels, and is ~15x faster on CPU than
    resizing float tensors (it wants channels-last memory, which ``to_channels_first`` provides).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def resize_short_side(x: torch.Tensor, short_side: int) -> torch.Tensor:
    """``[T, 3, H, W]`` -> short side ``short_side`` (aspect kept)."""
    return resize(x, short_side_size(x.shape[-2], x.shape[-1], short_side))


def normalize(x: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """0..255 ``[T, 3, H, W]`` (uint8 or float) -> ``float32 (x / 255 - mean) / std``, contiguous.

    One pass converts (and lays out contiguously) into a new tensor, two in-place passes subtract and
    scale: the same float32 operations as ``(x.float() - 255 mean) * (1 / (255 std))``, bit for bit.
    """
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * PIXEL_MAX
    inv_s = 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * PIXEL_MAX)
    # never modifies the input: the conversion always writes a new tensor
    return x.to(torch.float32, memory_format=torch.contiguous_format, copy=True).sub_(m).mul_(inv_s)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma replicated to 3 channels: ``[T, 3, H, W]`` -> same shape and dtype (uint8 rounds, like PIL ``L``).

    ``y = (r * 0.299 + g * 0.587) + b * 0.114`` in float32, per channel plane (the same operations in the
    same order as summing ``x.float() * weights`` over the channels, ~3x faster on channels-last frames).
    """
    w = [torch.tensor(v, dtype=torch.float32) for v in LUMA_WEIGHTS]
    y = x[:, 0].to(torch.float32, copy=True).mul_(w[0])
    y.add_(x[:, 1].to(torch.float32, copy=True).mul_(w[1])).add_(x[:, 2].to(torch.float32, copy=True).mul_(w[2]))
    if x.dtype == torch.uint8:
        y = y.round_().clamp_(0, PIXEL_MAX).to(torch.uint8)
    return y.unsqueeze(1).expand(-1, 3, -1, -1)


def centre_crop_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centred ``size`` square (torchvision ``CenterCrop`` rounding)."""
    _check_fits(height, width, size)
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0)), size, size


def three_crop_boxes(height: int, width: int, size: int) -> dict[str, tuple[int, int, int, int]]:
    """The official 3-crop test views (TSN ``GroupFullResSample`` without flips) as (top, left, h, w).

    With ``w_step = (width - size) // 4`` and ``h_step = (height - size) // 4``, the released code
    places all three crops at ``y = 2 * h_step`` on the short side and at ``x = 0`` ("left"),
    ``4 * w_step`` ("right") and ``2 * w_step`` ("centre") along the long side. Landscape frames match
    it exactly; for portrait frames the roles of the axes are swapped (top / bottom / centre at
    ``x = 2 * w_step``) where the released code would take the same square three times.
    """
    _check_fits(height, width, size)
    w_step, h_step = (width - size) // 4, (height - size) // 4
    if width >= height:
        offsets = {"left": (2 * h_step, 0), "right": (2 * h_step, 4 * w_step), "centre": (2 * h_step, 2 * w_step)}
    else:
        offsets = {"left": (0, 2 * w_step), "right": (4 * h_step, 2 * w_step), "centre": (2 * h_step, 2 * w_step)}
    return {k: (t, l, size, size) for k, (t, l) in offsets.items()}


def view_crop_box(height: int, width: int, size: int, position: str, crops: int) -> tuple[int, int, int, int]:
    """Box of the test view at ``position`` among ``crops`` (1: centre crop; 3: :func:`three_crop_boxes`)."""
    if crops == 1:
        if position not in ("centre", "center"):
            raise ValueError(f"crop position {position!r} with 1 crop; expected 'centre'")
        return centre_crop_box(height, width, size)
    if crops == 3:
        boxes = three_crop_boxes(height, width, size)
        key = "centre" if position == "center" else position
        if key not in boxes:
            raise ValueError(f"crop position {position!r}; expected 'left', 'centre' or 'right'")
        return boxes[key]
    raise ValueError(f"crops={crops}; expected 1 or 3")


def _check_fits(height: int, width: int, size: int) -> None:
    if size > height or size > width:
        raise ValueError(f"crop {size} larger than the {height}x{width} frame (short side below the crop size)")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(generator: torch.Generator, low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=generator))


def random_sized_crop_box(
    height: int,
    width: int,
    area: tuple[float, float],
    aspect: tuple[float, float],
    generator: torch.Generator,
    attempts: int = CROP_ATTEMPTS,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the authors' random-sized crop (TSN ``GroupRandomSizedCrop``).

    Each attempt: area share uniform in ``area``, aspect ratio uniform in ``aspect``, w and h swapped
    with probability 1/2; the first box that fits is placed uniformly. After ``attempts`` misses: a
    square of the short side at a uniform position along the long side (= resize the short side to
    the crop size, then a random crop).
    """
    total = height * width
    for _ in range(attempts):
        target = total * _uniform(generator, area[0], area[1])
        ratio = _uniform(generator, aspect[0], aspect[1])
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if float(torch.rand((), generator=generator, dtype=torch.float64)) < 0.5:
            w, h = h, w
        if 0 < w <= width and 0 < h <= height:
            return _randint(generator, 0, height - h), _randint(generator, 0, width - w), h, w
    side = min(height, width)
    return _randint(generator, 0, height - side), _randint(generator, 0, width - side), side, side


@dataclass(frozen=True)
class TrainTransform:
    """Train augmentation of Table A.1; ``__call__(frames uint8 [T,H,W,3], generator) -> [T,3,S,S]``."""

    size: int = 224
    short_side: int = 256
    crop_area: tuple[float, float] = (0.08, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    grayscale_p: float = 0.2
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def draw(self, height: int, width: int, generator: torch.Generator) -> dict:
        """The clip's random parameters for a ``height x width`` (already short-side-resized) frame."""
        box = random_sized_crop_box(height, width, self.crop_area, self.crop_aspect, generator)
        flip = float(torch.rand((), generator=generator)) < self.flip_p
        gray = float(torch.rand((), generator=generator)) < self.grayscale_p
        return {"box": box, "flip": flip, "gray": gray}

    def __call__(self, frames: ArrayLike, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        generator = generator if generator is not None else torch.default_generator
        x = resize_short_side(to_channels_first(frames), self.short_side)
        params = self.draw(x.shape[-2], x.shape[-1], generator)
        return self.apply(x, params)

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply drawn ``params`` to short-side-resized ``uint8 [T, 3, H, W]`` frames."""
        top, left, h, w = params["box"]
        x = resize(x[..., top : top + h, left : left + w], (self.size, self.size))
        if params["flip"]:
            x = x.flip(-1)
        if params["gray"]:
            x = grayscale(x)
        return normalize(x, self.mean, self.std)


@dataclass(frozen=True)
class TestTransform:
    """Resize the short side, crop the ``size`` square of view ``position`` among ``crops``.

    ``[T, H, W, 3] uint8 -> [T, 3, S, S] float``; no flip.
    """

    size: int = 224
    short_side: int = 256
    position: str = "centre"
    crops: int = 1
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __call__(self, frames: ArrayLike) -> torch.Tensor:
        x = resize_short_side(to_channels_first(frames), self.short_side)
        top, left, h, w = view_crop_box(x.shape[-2], x.shape[-1], self.size, self.position, self.crops)
        return normalize(x[..., top : top + h, left : left + w], self.mean, self.std)


def train_transform(cfg, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> TrainTransform:
    """Train transform of a ``RunConfig`` (``train.crop_area/crop_aspect/flip_p/grayscale_p``, ``short_side``)."""
    t = cfg.train
    return TrainTransform(
        size=cfg.model.resolution,
        short_side=cfg.short_side,
        crop_area=tuple(t.crop_area),
        crop_aspect=tuple(t.crop_aspect),
        flip_p=t.flip_p,
        grayscale_p=t.grayscale_p,
        mean=tuple(mean),
        std=tuple(std),
    )


def test_transform(
    cfg,
    position: str = "centre",
    crops: int = 1,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> TestTransform:
    """Test transform of a ``RunConfig`` for the crop at ``position`` among ``crops`` views."""
    return TestTransform(
        size=cfg.model.resolution,
        short_side=cfg.short_side,
        position=position,
        crops=crops,
        mean=tuple(mean),
        std=tuple(std),
    )


test_transform.__test__ = False  # not a pytest test when imported into a test module
TestTransform.__test__ = False
