"""TSN-style frame sampling (one frame per segment) and the spatial crops of multi-view testing.

All functions return 0-based frame indices ``int64 [T]`` into a video (or trimmed window) of ``n``
frames. The segment grid has boundaries ``floor(i * n / T)``, i = 0..T.

* train: a random frame inside each segment (when ``n <= T``: every frame once plus random repeats,
  sorted, as the authors' loader does).
* single-view test: the first frame of each segment, ``floor(i * n / T)`` (official code), or its
  centre, ``floor(i * n / T + n / (2T))`` (``mode="centre"``, the paper's description).
* multi-view test: clip ``c`` of ``clips`` is the same grid shifted by ``offset_c``, the offsets spread
  evenly over ``[0, n/T - 1]`` (truncated to integers); indices ``floor(offset_c + i * n / T) mod n``.
  With ``clips == 1`` this is the single-view ``mode``.
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
import torch

Generator = Union[np.random.Generator, torch.Generator]

#: Crop positions of the spatial views: 1 crop = centre; 3 crops = left, centre, right.
CROP_POSITIONS: dict[int, tuple[str, ...]] = {1: ("centre",), 3: ("left", "centre", "right")}


def _check(n: int, t: int) -> None:
    if n < 1:
        raise ValueError(f"cannot sample from a video of {n} frames; expected at least 1")
    if t < 1:
        raise ValueError(f"number of segments T={t}; expected at least 1")


def _randint(generator: Generator, low: int, high_exclusive: np.ndarray | int, size: int | None = None) -> np.ndarray:
    """Uniform integers in ``[low, high)`` (per element when ``high`` is an array)."""
    high = np.asarray(high_exclusive, dtype=np.int64)
    shape = high.shape if size is None else (size,)
    if isinstance(generator, torch.Generator):
        u = torch.rand(shape, generator=generator, dtype=torch.float64).numpy()
    else:
        u = generator.random(shape)
    return low + np.floor(u * (high - low)).astype(np.int64)


def segment_starts(n: int, t: int) -> np.ndarray:
    """Segment boundaries ``floor(i * n / T)`` for i = 0..T: ``int64 [T + 1]``."""
    _check(n, t)
    return (np.arange(t + 1, dtype=np.int64) * n) // t


def tsn_train_indices(n: int, t: int, generator: Generator) -> np.ndarray:
    """T indices, a random frame inside each of T equal segments; ``int64 [T]``, sorted.

    ``n <= T``: every frame once plus ``T - n`` random repeats, sorted (so every frame is seen).
    """
    _check(n, t)
    if n <= t:
        extra = _randint(generator, 0, n, size=t - n) if t > n else np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([np.arange(n, dtype=np.int64), extra]))
    ticks = segment_starts(n, t)
    lengths = ticks[1:] - ticks[:-1]
    return ticks[:-1] + _randint(generator, 0, lengths)


def clip_offsets(n: int, t: int, clips: int) -> np.ndarray:
    """Start offsets of ``clips`` views inside the first segment: ``linspace(0, n/T - 1, clips)`` truncated."""
    _check(n, t)
    if clips < 1:
        raise ValueError(f"clips={clips}; expected at least 1")
    return np.trunc(np.linspace(0.0, n / t - 1.0, num=clips)).astype(np.int64)


def tsn_test_indices(
    n: int, t: int, mode: Literal["first", "centre"] = "first", clip: int = 0, clips: int = 1
) -> np.ndarray:
    """Deterministic test indices ``int64 [T]`` of view ``clip`` (0-based) out of ``clips``.

    ``clips == 1``: ``mode="first"`` -> ``floor(i * n / T)``; ``mode="centre"`` -> the segment centres.
    ``clips > 1``: the official multi-clip grid (``mode`` does not apply): offsets from
    :func:`clip_offsets`, indices ``floor(offset + i * n / T) mod n``. ``n < T`` repeats frames.
    """
    _check(n, t)
    if not 0 <= clip < clips:
        raise ValueError(f"clip index {clip}; expected 0..{clips - 1}")
    tick = n / t
    grid = np.arange(t, dtype=np.float64) * tick
    if clips == 1:
        if mode == "first":
            return segment_starts(n, t)[:-1]
        if mode == "centre":
            return np.minimum(np.floor(grid + tick / 2.0).astype(np.int64), n - 1)
        raise ValueError(f"single-view frame mode {mode!r}; expected 'first' or 'centre'")
    offset = clip_offsets(n, t, clips)[clip]
    return np.maximum(np.floor(offset + grid).astype(np.int64), 0) % n


def crop_positions(crops: int) -> tuple[str, ...]:
    """Spatial crop names of ``crops`` views (1 -> centre; 3 -> left, centre, right)."""
    try:
        return CROP_POSITIONS[crops]
    except KeyError:
        raise ValueError(f"crops={crops}; expected one of {sorted(CROP_POSITIONS)}") from None


def view_grid(clips: int, crops: int) -> list[tuple[int, str]]:
    """Views in order ``view_index = clip * crops + crop``: list of (clip, crop position)."""
    positions = crop_positions(crops)
    if clips < 1:
        raise ValueError(f"clips={clips}; expected at least 1")
    return [(c, p) for c in range(clips) for p in positions]
