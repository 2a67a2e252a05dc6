"""Single frames of ToyKinetics with what they show: the image–text pretraining pool of the tiny CLIP.

A snapshot is one frame as it can occur in a world video — an object in the middle of an action (with
its motion trail), an object standing still, a grey/white distractor, or only the background — together
with its *facts*: for each of up to two objects its shape, colour and motion (``-1`` where absent).
Captions are drawn from the facts at training time (``bike.world.captions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bike.world.config import COLOUR_RGB, DISTRACTOR_RGB, STILL, WorldConfig
from bike.world.generator import (
    COLOUR_JITTER,
    DISTRACTOR_SCALE,
    REFERENCE_SIZE,
    STREAM_PRETRAIN,
    Composition,
    action_track,
)
from bike.world.render import SHAPE_IDS, TRAIL_NONE, ObjectSlot, make_backgrounds, render

#: Kinds of snapshot and their probabilities: an action frame, an object standing still, an empty
#: background, a distractor alone.
KIND_PROBS: dict[str, float] = {"action": 0.62, "still": 0.16, "empty": 0.08, "distractor": 0.14}
#: Probability that an action/still frame also shows a distractor.
EXTRA_DISTRACTOR_P = 0.3
#: Frames rendered per chunk (bounds the memory of the vectorised renderer).
CHUNK = 256

#: Slots of the facts arrays: 0 = the main object, 1 = the distractor.
MAIN, DISTRACTOR = 0, 1


@dataclass
class Vocabulary:
    """Index spaces of the facts: shapes, colours (class colours then distractor colours), motions
    (the config's motions then ``still``)."""

    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    motions: tuple[str, ...]

    @classmethod
    def of(cls, cfg: WorldConfig) -> "Vocabulary":
        return cls(tuple(cfg.shapes), tuple(cfg.colours) + tuple(DISTRACTOR_RGB), tuple(cfg.motions) + (STILL,))


@dataclass
class SnapshotPool:
    """frames: uint8 ``[N, H, W, 3]``; shape, colour, motion: int ``[N, 2]`` (slot MAIN, DISTRACTOR; -1 absent)."""

    frames: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    motion: np.ndarray
    vocab: Vocabulary

    def __len__(self) -> int:
        return len(self.frames)


def _rgb(rng: np.random.Generator, name: str) -> np.ndarray:
    table = COLOUR_RGB if name in COLOUR_RGB else DISTRACTOR_RGB
    return np.clip(np.asarray(table[name], np.float32) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255)


def _chunk(
    rng: np.random.Generator, cfg: WorldConfig, n: int, comps: Sequence[Composition], vocab: Vocabulary
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    size = cfg.size
    scale = size / REFERENCE_SIZE
    box = (0.0, float(size), 0.0, float(size))
    main, dis = ObjectSlot.empty(n), ObjectSlot.empty(n)
    facts = np.full((3, n, 2), -1, np.int64)  # shape, colour, motion
    kinds = rng.choice(list(KIND_PROBS), size=n, p=list(KIND_PROBS.values()))
    for i, kind in enumerate(kinds):
        if kind in ("action", "still"):
            if kind == "action":
                comp = comps[int(rng.integers(len(comps)))]
                colour, shape, motion = comp.colour, comp.shape, comp.motion
            else:
                colour = cfg.colours[int(rng.integers(len(cfg.colours)))]
                shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
                motion = cfg.motions[int(rng.integers(len(cfg.motions)))]
            length = max(int(round(rng.uniform(*cfg.window) * cfg.frames)), 2)
            radius = rng.uniform(*cfg.radius) * scale
            track = action_track(rng, motion, length, size, radius, box)
            t = int(rng.integers(length))
            main.visible[i] = True
            main.shape[i] = SHAPE_IDS[shape]
            main.rgb[i] = _rgb(rng, colour)
            main.cx[i], main.cy[i], main.r[i] = track.cx[t], track.cy[t], track.r[t]
            if kind == "action":
                main.trail[i], main.tdx[i], main.tdy[i] = track.trail, track.tdx[t], track.tdy[t]
            else:
                main.trail[i] = TRAIL_NONE
                motion = STILL
            facts[:, i, MAIN] = (vocab.shapes.index(shape), vocab.colours.index(colour), vocab.motions.index(motion))
        if kind == "distractor" or (kind in ("action", "still") and rng.random() < EXTRA_DISTRACTOR_P):
            shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
            colour = list(DISTRACTOR_RGB)[int(rng.integers(len(DISTRACTOR_RGB)))]
            radius = rng.uniform(*cfg.radius) * scale * DISTRACTOR_SCALE
            dis.visible[i] = True
            dis.shape[i] = SHAPE_IDS[shape]
            dis.rgb[i] = _rgb(rng, colour)
            dis.cx[i], dis.cy[i] = rng.uniform(radius + 1, size - radius - 1, 2)
            dis.r[i] = radius
            facts[:, i, DISTRACTOR] = (vocab.shapes.index(shape), vocab.colours.index(colour), vocab.motions.index(STILL))
    frames = render(make_backgrounds(rng, n, size), [dis, main], rng, cfg.noise_std)
    return frames, facts[0], facts[1], facts[2]


def sample_pool(cfg: WorldConfig, seed: int, comps: Sequence[Composition], n: int) -> SnapshotPool:
    """``n`` snapshots whose action frames show only the compositions ``comps``.

    Chunks draw from ``default_rng([seed, STREAM_PRETRAIN, chunk])``, so the pool is deterministic.
    """
    if not comps:
        raise ValueError("sample_pool: no compositions to show; expected at least one")
    vocab = Vocabulary.of(cfg)
    parts = []
    for c, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([int(seed), STREAM_PRETRAIN, c])
        parts.append(_chunk(rng, cfg, min(CHUNK, n - start), comps, vocab))
    frames, shape, colour, motion = (np.concatenate(x) for x in zip(*parts))
    return SnapshotPool(frames, shape, colour, motion, vocab)
