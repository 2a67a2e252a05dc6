"""Captions of ToyKinetics snapshots, and which captions are true of which frames.

A caption names one object of the frame with some of its attributes (``a photo of a red ball rising.``,
``a circle moving up``, ``This is a video about blue square``...) or says the frame is empty. Its
:class:`CaptionSpec` keeps the attributes it names (``-1`` = not named). A caption is *true* of a frame
when some object of the frame has every attribute the caption names (or, for an empty caption, when the
frame shows no object): the pretraining loss treats every true pair in a batch as a positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bike.world.config import (
    CAPTION_TEMPLATES,
    EMPTY_WORDS,
    MOTION_WORDS,
    SHAPE_WORDS,
    STILL,
    STILL_WORDS,
    UNRELATED_PHRASES,
)
from bike.world.snapshots import DISTRACTOR, MAIN, SnapshotPool, Vocabulary

#: Which attributes a caption names (c = colour, s = shape, m = motion) and how often.
PATTERNS: dict[str, float] = {"csm": 0.5, "cs": 0.2, "sm": 0.15, "cm": 0.1, "s": 0.05}
#: Probability of describing the main object when the frame also shows a distractor.
MAIN_P = 0.8
#: Templates for empty frames (no article before the phrase).
EMPTY_TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}", "This is a video about {}", "a video of {}")
#: The bare template: a caption that is the phrase alone.
BARE = "{}"


def templates(bare: bool = True) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(object caption templates, empty-frame templates); ``bare=False`` leaves out the bare ``{}``
    (``WorldConfig.pretrain_bare_captions``: web captions are rarely a phrase alone)."""
    if bare:
        return CAPTION_TEMPLATES, EMPTY_TEMPLATES
    return tuple(t for t in CAPTION_TEMPLATES if t != BARE), tuple(t for t in EMPTY_TEMPLATES if t != BARE)


@dataclass(frozen=True)
class CaptionSpec:
    """Attributes a caption names, as vocabulary indices (``-1`` = not named); ``empty`` captions
    say there is no object."""

    shape: int = -1
    colour: int = -1
    motion: int = -1
    empty: bool = False


def motion_words(motion: str) -> tuple[str, ...]:
    return STILL_WORDS if motion == STILL else MOTION_WORDS[motion]


def phrase(pattern: str, colour: str, shape: str, motion: str, rng: np.random.Generator | None = None) -> str:
    """The words of a caption for ``pattern`` (canonical words when ``rng`` is None, else synonyms)."""
    return " ".join(word for _, word in phrase_parts(pattern, colour, shape, motion, rng))


def phrase_parts(
    pattern: str, colour: str, shape: str, motion: str, rng: np.random.Generator | None = None
) -> list[tuple[str, str]]:
    """The words of a caption for ``pattern`` in order, each with the attribute it names (``c``, ``s``,
    ``m``; ``""`` for the generic ``shape`` of ``cm``); synonyms drawn as :func:`phrase` draws them."""

    def pick(options: tuple[str, ...]) -> str:
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    s = pick(SHAPE_WORDS[shape])
    m = pick(motion_words(motion))
    return {
        "csm": [("c", colour), ("s", s), ("m", m)],
        "cs": [("c", colour), ("s", s)],
        "sm": [("s", s), ("m", m)],
        "cm": [("c", colour), ("", "shape"), ("m", m)],
        "s": [("s", s)],
    }[pattern]


def _pick_object(pool: SnapshotPool, i: int, present: list[int], rng: np.random.Generator) -> tuple[int, int, int]:
    """(shape, colour, motion) of the object a caption of frame ``i`` describes: the main one with
    probability ``MAIN_P`` when a distractor is present too (``present``: the frame's object slots)."""
    j = present[0] if len(present) == 1 or rng.random() < MAIN_P else present[1]
    return int(pool.shape[i, j]), int(pool.colour[i, j]), int(pool.motion[i, j])


def _spec(named: str, shape: int, colour: int, motion: int) -> CaptionSpec:
    """The spec of a caption whose words name the attributes in ``named`` (``c``, ``s``, ``m``)."""
    return CaptionSpec(
        shape=shape if "s" in named else -1,
        colour=colour if "c" in named else -1,
        motion=motion if "m" in named else -1,
    )


def sample_captions(
    pool: SnapshotPool,
    idx: np.ndarray,
    rng: np.random.Generator,
    list_p: float = 0.0,
    bare: bool = True,
    bare_full: bool = True,
) -> tuple[list[str], list[CaptionSpec]]:
    """One random caption (text and spec) for each frame ``idx`` of the pool.

    ``list_p``: the share of object captions that list 2-4 phrases about the object, comma-joined as in
    an attribute sentence (``a video of a red ball,ball rising,red ball rising``); the caption names the
    union of what its phrases name. ``bare``: the bare template ``{}`` is one of the templates.
    ``bare_full=False``: a caption naming colour, shape and motion is never bare (one template draw all
    the same, among the others).
    """
    object_templates, empty_templates = templates(bare)
    sentence_templates = templates(False)[0]
    vocab = pool.vocab
    names = list(PATTERNS)
    probs = np.array(list(PATTERNS.values()))
    texts: list[str] = []
    specs: list[CaptionSpec] = []
    for i in idx:
        present = [j for j in (MAIN, DISTRACTOR) if pool.shape[i, j] >= 0]
        if not present:
            texts.append(empty_templates[int(rng.integers(len(empty_templates)))].format(
                EMPTY_WORDS[int(rng.integers(len(EMPTY_WORDS)))]))
            specs.append(CaptionSpec(empty=True))
            continue
        s_i, c_i, m_i = _pick_object(pool, i, present, rng)
        if list_p and rng.random() < list_p:
            chosen = [names[int(i)] for i in rng.choice(len(names), size=int(rng.integers(2, 5)), replace=False, p=probs)]
            words = ",".join(phrase(p, vocab.colours[c_i], vocab.shapes[s_i], vocab.motions[m_i], rng) for p in chosen)
            pattern = "".join(sorted(set("".join(chosen))))
        else:
            pattern = names[int(rng.choice(len(names), p=probs))]
            words = phrase(pattern, vocab.colours[c_i], vocab.shapes[s_i], vocab.motions[m_i], rng)
        choices = sentence_templates if not bare_full and set(pattern) == set("csm") else object_templates
        texts.append(choices[int(rng.integers(len(choices)))].format(words))
        specs.append(_spec(pattern, s_i, c_i, m_i))
    return texts, specs


def prefix_captions(
    pool: SnapshotPool, idx: np.ndarray, rng: np.random.Generator, count: int, bare: bool = True
) -> tuple[list[str], list[CaptionSpec]]:
    """Up to ``count`` distinct caption prefixes (text and spec) of frames ``idx`` that show an object.

    Each is an object caption cut after one of the attributes it names (``a video of a red``, ``a video
    of a red ball``, ``a video of a red ball rising``), to be read at its last word rather than at its
    end-of-text token: in a causal text tower that is the output of that word inside the whole caption.
    The spec names what the words up to the cut name, so the output at each word is trained to mean the
    caption so far, as the outputs at the word positions of a web-scale CLIP are (its captions come in
    every length, and a prefix of one is another).
    """
    object_templates, _ = templates(bare)
    vocab = pool.vocab
    names = list(PATTERNS)
    probs = np.array(list(PATTERNS.values()))
    seen: dict[str, CaptionSpec] = {}
    with_object = [int(i) for i in idx if (pool.shape[i] >= 0).any()]
    for i in rng.permutation(with_object)[:count] if with_object else []:
        present = [j for j in (MAIN, DISTRACTOR) if pool.shape[i, j] >= 0]
        s_i, c_i, m_i = _pick_object(pool, i, present, rng)
        pattern = names[int(rng.choice(len(names), p=probs))]
        parts = phrase_parts(pattern, vocab.colours[c_i], vocab.shapes[s_i], vocab.motions[m_i], rng)
        parts = parts[: int(rng.integers(1, len(parts) + 1))]
        named = "".join(a for a, _ in parts)
        template = object_templates[int(rng.integers(len(object_templates)))].split("{}")[0]
        text = template + " ".join(w for _, w in parts)
        seen.setdefault(text, _spec(named, s_i, c_i, m_i))
    return list(seen), list(seen.values())


def truth_matrix(pool: SnapshotPool, idx: np.ndarray, specs: list[CaptionSpec]) -> np.ndarray:
    """bool ``[len(idx), len(specs)]``: caption u is true of frame idx[i]."""
    sh, co, mo = pool.shape[idx], pool.colour[idx], pool.motion[idx]  # [B, 2]
    cs = np.array([s.shape for s in specs])[None, :, None]
    cc = np.array([s.colour for s in specs])[None, :, None]
    cm = np.array([s.motion for s in specs])[None, :, None]
    empty = np.array([s.empty for s in specs])[None, :]
    present = sh[:, None, :] >= 0  # [B, 1, 2]
    ok = present & ((cs < 0) | (cs == sh[:, None, :])) & ((cc < 0) | (cc == co[:, None, :])) & (
        (cm < 0) | (cm == mo[:, None, :])
    )
    obj_true = ok.any(-1)  # [B, U]
    frame_empty = ~present.any(-1)  # [B, 1]
    return np.where(empty, frame_empty, obj_true & ~empty)


def vocabulary_phrases(vocab: Vocabulary, negatives: bool = False, lists: bool = False) -> list[str]:
    """Every word the captions can use (to find the token ids the pretraining touches); ``negatives``:
    with the words of the negative captions (:func:`negative_captions`); ``lists``: with the comma of
    list captions."""
    words = list(vocab.colours) + ["shape"]
    for s in vocab.shapes:
        words += SHAPE_WORDS[s]
    for m in vocab.motions:
        words += motion_words(m)
    words += list(UNRELATED_PHRASES) if negatives else []
    words += [","] if lists else []
    return words + list(EMPTY_WORDS) + [t.format("") for t in CAPTION_TEMPLATES + EMPTY_TEMPLATES]


def negative_captions(count: int, taken: set[str], rng: np.random.Generator, bare: bool = True) -> list[str]:
    """Up to ``count`` distinct captions of things no frame of the world shows (``UNRELATED_PHRASES``),
    none of them in ``taken``: negatives of every frame, as a web-scale CLIP sees captions of things
    absent from a given image."""
    object_templates, _ = templates(bare)
    out: list[str] = []
    for i in rng.permutation(len(UNRELATED_PHRASES))[:count]:
        text = object_templates[int(rng.integers(len(object_templates)))].format(UNRELATED_PHRASES[int(i)])
        if text not in taken:
            out.append(text)
    return out
