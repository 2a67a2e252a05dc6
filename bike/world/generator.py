"""ToyKinetics: procedural videos of coloured shapes in motion, written as real H.264 mp4 files.

A video shows one action (``red ball rising``) that occupies a random contiguous window of its frames;
the other frames show the background, the same object standing still, and/or a grey or white
distractor object — frames that carry no (or only partial) evidence of the class, so temporal saliency
matters. A multi-label video shows two actions (one in each half of the frame) whose windows may
overlap, annotated Charades-style.

Everything is deterministic from the seed: each video draws from its own generator
``numpy.random.default_rng([seed, stream, index])``, so one video never depends on another.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Sequence

import numpy as np

from bike.world.config import COLOUR_RGB, DISTRACTOR_RGB, WorldConfig
from bike.world.render import (
    SHAPE_IDS,
    TRAIL_GROW,
    TRAIL_NONE,
    TRAIL_SHAKE,
    TRAIL_SHRINK,
    TRAIL_TRANSLATE,
    ObjectSlot,
    make_backgrounds,
    render,
)

#: Random streams (the second entry of every per-item seed), one per kind of item.
STREAM_SPLIT, STREAM_GENERAL_TRAIN, STREAM_GENERAL_VAL = 0, 1, 2
STREAM_NOVEL_TRAIN, STREAM_NOVEL_VAL = 3, 4
STREAM_MULTI_TRAIN, STREAM_MULTI_TEST = 5, 6
STREAM_PRETRAIN, STREAM_PRETRAIN_STEPS = 7, 8

#: Reference frame size the pixel constants below are given for.
REFERENCE_SIZE = 64
#: Travel of a translating object, as a share of the frame size.
TRAVEL = (0.25, 0.4)
#: Spacing of the trail copies, relative to the object's radius.
TRAIL_SPACING = 0.45
#: Shake amplitude relative to the radius.
SHAKE_AMPLITUDE = 0.25
#: Radius of a growing object at the start and end of its action, relative to its nominal radius.
GROW_RANGE = (0.55, 1.25)
#: Colour jitter (grey levels, per channel) of objects.
COLOUR_JITTER = 15.0
#: Radius of a distractor relative to an action object.
DISTRACTOR_SCALE = 0.8
#: Shortest share of the video a distractor is visible.
DISTRACTOR_MIN_SHARE = 0.3
#: Objects of multi-label videos are smaller (two share the frame) ...
MULTI_SCALE = 0.7
#: ... and each moves in a vertical band of this share of the width (left and right bands overlap).
MULTI_BAND = 0.6


@dataclass(frozen=True, order=True)
class Composition:
    """A class of the world: ``<colour> <shape> <motion>``."""

    colour: str
    shape: str
    motion: str

    @property
    def name(self) -> str:
        """Plain-language class name, e.g. ``red ball rising``."""
        return f"{self.colour} {self.shape} {self.motion}"

    @property
    def slug(self) -> str:
        """Directory-safe name, e.g. ``red_ball_rising``."""
        return self.name.replace(" ", "_")


@dataclass(frozen=True)
class ActionInstance:
    """One action in a video: frames ``[start, end)``."""

    composition: Composition
    start: int
    end: int


@dataclass
class Track:
    """Object state over the L frames of an action: cx, cy, r ``[L]``, trail kind, tdx, tdy ``[L]``."""

    cx: np.ndarray
    cy: np.ndarray
    r: np.ndarray
    trail: int
    tdx: np.ndarray
    tdy: np.ndarray


# ---------------------------------------------------------------------------------------- classes
def all_compositions(cfg: WorldConfig) -> list[Composition]:
    """Every ``colour x shape x motion`` of the config, sorted by name."""
    return sorted(Composition(c, s, m) for c, s, m in product(cfg.colours, cfg.shapes, cfg.motions))


def _covers_pairs(seen: Sequence[Composition], cfg: WorldConfig) -> bool:
    """True when every (colour, shape), (shape, motion) and (colour, motion) pair occurs in ``seen``."""
    cs = {(c.colour, c.shape) for c in seen}
    sm = {(c.shape, c.motion) for c in seen}
    cm = {(c.colour, c.motion) for c in seen}
    return (
        len(cs) == len(cfg.colours) * len(cfg.shapes)
        and len(sm) == len(cfg.shapes) * len(cfg.motions)
        and len(cm) == len(cfg.colours) * len(cfg.motions)
    )


def split_compositions(cfg: WorldConfig, seed: int, max_tries: int = 10_000) -> tuple[list[Composition], list[Composition]]:
    """(seen, novel): ``cfg.num_novel`` compositions held out so that every pair of factors stays seen.

    A novel class is therefore a new combination of a colour, a shape and a motion that all occur (in
    every pairing) in training — the compositional analogue of a zero-shot class.
    """
    comps = all_compositions(cfg)
    rng = np.random.default_rng([seed, STREAM_SPLIT])
    for _ in range(max_tries):
        pick = set(rng.choice(len(comps), size=cfg.num_novel, replace=False).tolist())
        seen = [c for i, c in enumerate(comps) if i not in pick]
        if _covers_pairs(seen, cfg):
            return seen, [c for i, c in enumerate(comps) if i in pick]
    raise ValueError(
        f"WorldConfig.num_novel={cfg.num_novel}: no held-out set of that size keeps every factor pair seen "
        f"among {len(comps)} compositions; expected a smaller num_novel"
    )


# ---------------------------------------------------------------------------------------- tracks
def action_track(
    rng: np.random.Generator,
    motion: str,
    length: int,
    size: int,
    radius: float,
    box: tuple[float, float, float, float],
) -> Track:
    """The object's state over ``length`` frames of ``motion`` inside ``box`` = (x0, x1, y0, y1)."""
    scale = size / REFERENCE_SIZE
    x0, x1, y0, y1 = box
    L = max(int(length), 2)
    t = np.linspace(0.0, 1.0, L, dtype=np.float32)
    r = np.full(L, radius, np.float32)
    zeros = np.zeros(L, np.float32)
    gap = TRAIL_SPACING * radius
    margin = radius + 1.0 * scale

    def _span(lo: float, hi: float, travel: float) -> tuple[float, float]:
        """(start, travel): the lower end and length of a path that fits between lo and hi."""
        room = max(hi - lo - 2 * margin, 0.0)
        travel = min(travel, room)
        start = rng.uniform(lo + margin, hi - margin - travel) if room > travel else lo + margin
        return start, travel

    if motion in ("rising", "falling", "sliding"):
        travel = rng.uniform(*TRAVEL) * size
        vertical = motion != "sliding"
        lo, hi = (y0, y1) if vertical else (x0, x1)
        start, travel = _span(lo, hi, travel)
        direction = -1.0 if motion == "rising" else 1.0 if motion == "falling" else float(rng.choice([-1.0, 1.0]))
        if direction < 0:
            start = start + travel
        along = start + direction * travel * t
        across_lo, across_hi = (x0, x1) if vertical else (y0, y1)
        across = np.full(L, rng.uniform(across_lo + margin, max(across_hi - margin, across_lo + margin)), np.float32)
        cx, cy = (across, along) if vertical else (along, across)
        step = np.full(L, direction * gap, np.float32)
        tdx, tdy = (zeros, step) if vertical else (step, zeros)
        return Track(cx.astype(np.float32), cy.astype(np.float32), r, TRAIL_TRANSLATE, tdx, tdy)

    cx0 = rng.uniform(x0 + margin * 1.3, max(x1 - margin * 1.3, x0 + margin * 1.3))
    cy0 = rng.uniform(y0 + margin * 1.3, max(y1 - margin * 1.3, y0 + margin * 1.3))
    cy = np.full(L, cy0, np.float32)
    if motion == "shaking":
        amp = SHAKE_AMPLITUDE * radius
        phase = rng.integers(0, 2)
        cx = (cx0 + amp * np.where((np.arange(L) + phase) % 2 == 0, 1.0, -1.0)).astype(np.float32)
        return Track(cx, cy, r, TRAIL_SHAKE, np.full(L, gap, np.float32), zeros)
    if motion in ("growing", "shrinking"):
        lo, hi = GROW_RANGE
        ratio = lo + (hi - lo) * (t if motion == "growing" else 1.0 - t)
        return Track(np.full(L, cx0, np.float32), cy, (radius * ratio).astype(np.float32),
                     TRAIL_GROW if motion == "growing" else TRAIL_SHRINK, zeros, zeros)
    raise ValueError(f"action_track: unknown motion {motion!r}")


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255)


def _window(rng: np.random.Generator, cfg: WorldConfig) -> tuple[int, int]:
    """A random contiguous window ``[start, end)`` covering ``cfg.window`` of the frames."""
    T = cfg.frames
    length = int(np.clip(round(rng.uniform(*cfg.window) * T), 2, T))
    start = int(rng.integers(0, T - length + 1))
    return start, start + length


def action_slot(
    rng: np.random.Generator, cfg: WorldConfig, comp: Composition, box: tuple[float, float, float, float], scale: float = 1.0
) -> tuple[ObjectSlot, ActionInstance]:
    """The object slot of one action over the whole video and its annotated window."""
    T, size = cfg.frames, cfg.size
    start, end = _window(rng, cfg)
    radius = rng.uniform(*cfg.radius) * size / REFERENCE_SIZE * scale
    track = action_track(rng, comp.motion, end - start, size, radius, box)
    slot = ObjectSlot.empty(T)
    slot.shape[:] = SHAPE_IDS[comp.shape]
    slot.rgb[:] = _jitter_rgb(rng, COLOUR_RGB[comp.colour])
    sl = slice(start, end)
    slot.visible[sl] = True
    slot.cx[sl], slot.cy[sl], slot.r[sl] = track.cx, track.cy, track.r
    slot.trail[sl] = track.trail
    slot.tdx[sl], slot.tdy[sl] = track.tdx, track.tdy
    if cfg.trail_p < 1.0 and rng.random() >= cfg.trail_p:  # no draw at the default (byte-identical worlds)
        slot.trail[sl] = TRAIL_NONE  # the motion shows only across frames, not in any single one
    # outside the window the object is absent, or stands still where the action begins/ends
    for frames, src in ((slice(0, start), 0), (slice(end, T), -1)):
        if rng.random() < cfg.still_outside_p:
            slot.visible[frames] = True
            slot.cx[frames], slot.cy[frames], slot.r[frames] = track.cx[src], track.cy[src], track.r[src]
            slot.trail[frames] = TRAIL_NONE
    return slot, ActionInstance(comp, start, end)


def distractor_slot(rng: np.random.Generator, cfg: WorldConfig, shapes: Sequence[str]) -> ObjectSlot:
    """A static grey or white object visible in a random window of the video."""
    T, size, width = cfg.frames, cfg.size, cfg.frame_width
    slot = ObjectSlot.empty(T)
    length = int(np.clip(round(rng.uniform(DISTRACTOR_MIN_SHARE, 1.0) * T), 1, T))
    start = int(rng.integers(0, T - length + 1))
    radius = rng.uniform(*cfg.radius) * size / REFERENCE_SIZE * DISTRACTOR_SCALE
    colour = list(DISTRACTOR_RGB)[int(rng.integers(len(DISTRACTOR_RGB)))]
    slot.visible[start:start + length] = True
    slot.shape[:] = SHAPE_IDS[shapes[int(rng.integers(len(shapes)))]]
    slot.rgb[:] = _jitter_rgb(rng, DISTRACTOR_RGB[colour])
    slot.cx[:] = rng.uniform(radius + 1, width - radius - 1)  # anywhere across a landscape frame
    slot.cy[:] = rng.uniform(radius + 1, size - radius - 1)
    slot.r[:] = radius
    return slot


def make_video(
    rng: np.random.Generator, cfg: WorldConfig, comps: Sequence[Composition]
) -> tuple[np.ndarray, list[ActionInstance]]:
    """Render one video with one action per composition in ``comps`` (1 or 2).

    Returns (frames uint8 ``[T, H, W, 3]``, the actions with their frame windows). The actions keep to
    the centred ``size`` square of a landscape frame (``cfg.width``); a distractor may stand anywhere.
    """
    if not 1 <= len(comps) <= 2:
        raise ValueError(f"make_video: got {len(comps)} compositions; expected 1 or 2")
    T, size = cfg.frames, cfg.size
    bg = np.repeat(make_backgrounds(rng, 1, size, width=cfg.frame_width), T, axis=0)
    bg += rng.normal(0, 1.5, (T, 1, 1, 1)).astype(np.float32)  # slight flicker of the light
    slots: list[ObjectSlot] = []
    if rng.random() < cfg.distractor_p:
        slots.append(distractor_slot(rng, cfg, cfg.shapes))
    if len(comps) == 1:
        boxes, scale = [(0.0, float(size), 0.0, float(size))], 1.0
    else:
        halves = [(0.0, MULTI_BAND * size), ((1 - MULTI_BAND) * size, float(size))]
        order = rng.permutation(2)
        boxes = [(halves[i][0], halves[i][1], 0.0, float(size)) for i in order]
        scale = MULTI_SCALE
    left = (cfg.frame_width - size) / 2
    if left:
        boxes = [(x0 + left, x1 + left, y0, y1) for x0, x1, y0, y1 in boxes]
    instances = []
    for comp, box in zip(comps, boxes):
        slot, inst = action_slot(rng, cfg, comp, box, scale)
        slots.append(slot)
        instances.append(inst)
    return render(bg, slots, rng, cfg.noise_std), instances


def video_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one item: independent of every other item."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def pick_pair(rng: np.random.Generator, classes: Sequence[Composition]) -> tuple[Composition, Composition]:
    """Two classes for a multi-label video, preferring two different objects (colour or shape)."""
    if len(classes) < 2:
        raise ValueError(f"pick_pair: got {len(classes)} class(es); expected at least 2 for a two-action video")
    first = classes[int(rng.integers(len(classes)))]
    others = [c for c in classes if (c.colour, c.shape) != (first.colour, first.shape)]
    others = others or [c for c in classes if c != first]
    return first, others[int(rng.integers(len(others)))]


def instance_seconds(inst: ActionInstance, fps: int) -> tuple[float, float]:
    """(start, end) of an instance in seconds."""
    return inst.start / fps, inst.end / fps


def describe(instances: Sequence[ActionInstance]) -> str:
    """A Charades-style script: ``A red ball rises; a blue square shrinks.``"""
    parts = [f"a {i.composition.colour} {i.composition.shape} is {i.composition.motion}" for i in instances]
    text = " while ".join(parts)
    return text[:1].upper() + text[1:] + "."


def class_index(classes: Sequence[Composition]) -> dict[Composition, int]:
    return {c: i for i, c in enumerate(classes)}

