"""ToyKinetics: the vocabulary and the size presets of the miniature video world.

A class of the world is a composition ``<colour> <shape> <motion>`` written in plain language, e.g.
``red ball rising`` or ``blue cross shaking``. Every motion leaves a visible trail in a single frame
(fading copies behind a moving object, concentric outlines on a growing or shrinking one), so a frame
carries evidence the way a frame of a real action does, and every motion is symmetric under a
horizontal flip (BIKE's training augmentation flips frames: ``sliding`` covers both directions).

:class:`WorldConfig` holds every knob of the world; its :meth:`WorldConfig.content_hash` together
with the seed keys the built data and the pretrained checkpoint. ``SIZES`` holds the presets
``default`` (builds in a few minutes on 2 CPU cores) and ``test`` (seconds).
"""

from __future__ import annotations

from bike.config import DEFAULT_FRAMES, DEFAULT_PROMPT
from bike.numerics import NUMERICS_VERSION

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence

from bike.data.video_io import ENCODER_VERSION

#: Bump when the rendering or the split logic changes, so old worlds are rebuilt.
GENERATOR_VERSION = 1

#: Shape words. Synonyms (used only in pretraining captions) follow the canonical word.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "ball": ("ball", "circle"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus sign"),
}

#: Colour words -> RGB of the object (jittered per video).
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 40),
    "green": (40, 185, 65),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 45),
    "purple": (160, 65, 210),
}

#: Colours of the distractor objects (never a class colour).
DISTRACTOR_RGB: dict[str, tuple[int, int, int]] = {
    "grey": (135, 135, 135),
    "white": (240, 240, 240),
}

#: Motion words (class names use the first; pretraining captions also use the others).
MOTION_WORDS: dict[str, tuple[str, ...]] = {
    "rising": ("rising", "moving up", "going up"),
    "falling": ("falling", "moving down", "dropping"),
    "sliding": ("sliding", "sliding sideways", "moving sideways"),
    "shaking": ("shaking", "wobbling", "jittering"),
    "growing": ("growing", "getting bigger", "expanding"),
    "shrinking": ("shrinking", "getting smaller", "contracting"),
}

#: The state of an object that is present but does not move (frames outside the action window).
STILL = "still"
STILL_WORDS: tuple[str, ...] = ("standing still", "resting", "not moving")

#: Phrases for frames without any object.
EMPTY_WORDS: tuple[str, ...] = ("an empty background", "an empty scene", "nothing")

#: Caption templates of the pretraining (the BIKE prompt is one of them).
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a {}",
    "a photo of a {}.",
    "a picture of a {}",
    "a video of a {}",
    "This is a video about {}",
    "there is a {}",
)

#: Phrases of the attribute lexicon that no frame of the world shows (the unrelated names a real
#: lexicon holds, like most of Kinetics-400 for a given video).
UNRELATED_PHRASES: tuple[str, ...] = (
    "dark room",
    "noisy screen",
    "spinning wheel",
    "bouncing spring",
    "flashing light",
    "orange star",
    "black hole",
    "pink heart",
    "wooden table",
    "rain on a window",
    "bird flying",
    "car driving",
)

Size = Literal["default", "test"]

#: ``WorldConfig`` fields that enter :meth:`WorldConfig.content_hash` only when their switch (the
#: field named first) differs from its off value (second): ``{field: (switch, off)}``.
HASHED_WHEN_ON: dict[str, tuple[str, object]] = {
    "pretrain_negative_captions": ("pretrain_negative_captions", 0),
    "pretrain_tail_every": ("pretrain_tail_every", 0),
    "pretrain_tail_captions": ("pretrain_tail_every", 0),
    "pretrain_list_p": ("pretrain_list_p", 0.0),
    "pretrain_prefix_every": ("pretrain_prefix_every", 0),
    "pretrain_prefix_captions": ("pretrain_prefix_every", 0),
    "lexicon_facets": ("lexicon_facets", False),
    "trail_p": ("trail_p", 1.0),
    "pretrain_shift": ("pretrain_shift", 0.03),
    "width": ("width", 0),
    "pretrain_logit_scale": ("pretrain_logit_scale", 0.0),
    "pretrain_bare_captions": ("pretrain_bare_captions", True),
    "pretrain_bare_full": ("pretrain_bare_full", True),
    "backbone_step": ("backbone_step", 0),
}


@dataclass(frozen=True)
class WorldConfig:
    """Every knob of a ToyKinetics world (the seed is passed separately).

    Classes are ``colour x shape x motion``; ``num_novel`` compositions are held out of the general
    split (and of the CLIP pretraining when ``pretrain_holdout_novel``) and form the zero-shot /
    few-shot "novel" dataset. ``multilabel_classes`` of the seen compositions form the Charades-style
    multi-label dataset, whose videos show two actions each.
    """

    shapes: tuple[str, ...] = tuple(SHAPE_WORDS)
    colours: tuple[str, ...] = tuple(COLOUR_RGB)
    motions: tuple[str, ...] = tuple(MOTION_WORDS)
    num_novel: int = 24
    # videos: T frames of size x size pixels at fps frames per second
    frames: int = 32
    fps: int = 8
    size: int = 64
    #: frame width in pixels (0: square frames of ``size``). A landscape frame (e.g. 80 at size 64; a
    #: Kinetics frame is 4:3) is wider than the test crop, so the three test crops see different parts of
    #: the scene; the action keeps to the centred ``size`` square, as a camera frames its subject, and
    #: the CLIP is pretrained on square snapshots as before
    width: int = 0
    train_per_class: int = 10
    val_per_class: int = 4
    novel_train_per_class: int = 8
    novel_val_per_class: int = 6
    multilabel_classes: int = 16
    multilabel_train_videos: int = 120
    multilabel_test_videos: int = 60
    # how the action sits in the video
    #: share of the frames the action occupies (Kinetics clips are trimmed around their action; with the
    #: first worlds' 35-70 % the generator's frame mean was diluted by the frames outside it: docs/world.md)
    window: tuple[float, float] = (0.6, 0.9)
    still_outside_p: float = 0.5  # the object stands still before/after the action (else absent)
    distractor_p: float = 0.5  # a grey/white static object somewhere in the video
    radius: tuple[float, float] = (12.0, 16.0)  # object radius in pixels (at size 64); a patch-16 ViT needs them large
    noise_std: float = 3.0  # per-frame sensor noise (grey levels)
    #: share of the actions drawn with their motion trail (the rest show their motion only across frames,
    #: so only a model of temporal order tells ``rising`` from ``falling``; 1: every action)
    trail_p: float = 1.0
    # the tiny CLIP and its pretraining
    model: str = "bike-tiny"
    pretrain_frames: int = 16384
    pretrain_steps: int = 1500
    pretrain_batch: int = 128
    pretrain_lr: float = 3e-3
    pretrain_weight_decay: float = 0.05
    pretrain_warmup: int = 50
    pretrain_holdout_novel: bool = True
    #: largest random shift of a pretraining frame's sampling window, as a share of its side (with the
    #: augmentation's zoom of 0.8-1.0); 0.125 moves it by up to half a 16-pixel patch at 64 pixels
    pretrain_shift: float = 0.03
    #: captions of things no frame shows (``UNRELATED_PHRASES``) added to each pretraining step as
    #: negatives only, so the lexicon's unrelated phrases are words the CLIP knows (0: off)
    pretrain_negative_captions: int = 8
    pretrain_threads: int = 1
    #: every this many steps, ``pretrain_tail_captions`` captions are read at a random padding position
    #: after their end-of-text token, grounding every text position (0: off)
    pretrain_tail_every: int = 4
    pretrain_tail_captions: int = 16
    #: every this many steps, ``pretrain_prefix_captions`` caption prefixes (``a video of a red``, ``a
    #: video of a red ball``) are read at their last word, each a positive of the frames it is true of:
    #: the outputs at the word positions mean the caption so far (0: off)
    pretrain_prefix_every: int = 0
    pretrain_prefix_captions: int = 16
    #: share of object captions that list 2-4 phrases about the object, comma-joined (0: off)
    pretrain_list_p: float = 0.0
    #: the logit scale the CLIP's pretraining starts from (learnable, clamped at 100 as CLIP's is; 0:
    #: open_clip's initial 1/0.07, which a short pretraining leaves near 18)
    pretrain_logit_scale: float = 0.0
    #: the bare template ``{}`` (a caption that is the phrase alone) is one of the pretraining's templates;
    #: false: every caption is a sentence, as web captions mostly are, so a bare phrase is a stranger
    pretrain_bare_captions: bool = True
    #: the bare template may caption a phrase that names colour, shape and motion (``red ball rising``);
    #: false: a bare caption names one or two of them, as a tag does, and a whole action is always said
    #: in a sentence, so the template tells the text tower what kind of phrase it wraps
    pretrain_bare_full: bool = True
    #: the runs' backbone is the CLIP after this many of the pretraining's steps, and the final CLIP is the
    #: attribute generator: a generator stronger than the backbone, as the paper's ViT-L/14 generator is
    #: stronger than its ViT-B/32 backbone (0: one CLIP, backbone and generator alike)
    backbone_step: int = 0
    #: the world lexicon also names the facets of an action (``ball rising``, ``red shape``, ``ball``)
    lexicon_facets: bool = True
    # what a BIKE run on this world uses
    model_frames: int = DEFAULT_FRAMES
    prompt: str = DEFAULT_PROMPT
    generator_version: int = field(default=GENERATOR_VERSION)
    #: bike.data.video_io.ENCODER_VERSION: the codec settings the videos are written with.
    encoder_version: int = field(default=ENCODER_VERSION)
    #: bike.numerics.NUMERICS_VERSION: the pinned CPU kernels the tiny CLIP is pretrained with.
    numerics_version: int = field(default=NUMERICS_VERSION)

    def __post_init__(self) -> None:
        for name, words, known in (
            ("shapes", self.shapes, SHAPE_WORDS),
            ("colours", self.colours, COLOUR_RGB),
            ("motions", self.motions, MOTION_WORDS),
        ):
            unknown = [w for w in words if w not in known]
            if unknown or not words:
                raise ValueError(f"WorldConfig.{name}: got {list(words)}; expected a non-empty subset of {list(known)}")
        total = len(self.shapes) * len(self.colours) * len(self.motions)
        if not 2 <= self.num_novel <= total // 2:
            raise ValueError(
                f"WorldConfig.num_novel: got {self.num_novel}; expected 2..{total // 2} (half of the {total} compositions)"
            )
        if not 1 <= self.multilabel_classes <= total - self.num_novel:
            raise ValueError(
                f"WorldConfig.multilabel_classes: got {self.multilabel_classes}; expected 1..{total - self.num_novel}"
            )
        if not 0.0 < self.window[0] <= self.window[1] <= 1.0:
            raise ValueError(f"WorldConfig.window: got {self.window}; expected 0 < low <= high <= 1")
        if self.size % 16 or self.size < 32:
            raise ValueError(f"WorldConfig.size: got {self.size}; expected a multiple of 16, at least 32 (decord reads these widths)")
        if self.width and (self.width % 16 or self.width < self.size):
            raise ValueError(f"WorldConfig.width: got {self.width}; expected 0 (square) or a multiple of 16 of at least size={self.size}")
        for name in ("pretrain_negative_captions", "pretrain_tail_every", "pretrain_prefix_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"WorldConfig.{name}: got {getattr(self, name)}; expected 0 (off) or more")
        if self.pretrain_logit_scale and not 1.0 <= self.pretrain_logit_scale <= 100.0:
            raise ValueError(f"WorldConfig.pretrain_logit_scale: got {self.pretrain_logit_scale}; expected 0 (open_clip's "
                             "initial 1/0.07) or a scale from 1 to 100 (CLIP's clamp)")
        if not 0 <= self.backbone_step <= self.pretrain_steps:
            raise ValueError(f"WorldConfig.backbone_step: got {self.backbone_step}; expected 0 (one CLIP) or a step "
                             f"of the pretraining, 1..pretrain_steps={self.pretrain_steps}")
        if not 0.0 <= self.pretrain_shift <= 0.5:
            raise ValueError(f"WorldConfig.pretrain_shift: got {self.pretrain_shift}; expected a share of the frame in [0, 0.5]")
        if not 0.0 <= self.trail_p <= 1.0:
            raise ValueError(f"WorldConfig.trail_p: got {self.trail_p}; expected a share in [0, 1]")
        for name in ("pretrain_tail_captions", "pretrain_prefix_captions"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name}: got {getattr(self, name)}; expected at least 1")
        if self.frames < self.model_frames:
            raise ValueError(f"WorldConfig.frames: got {self.frames}; expected at least model_frames={self.model_frames}")

    @property
    def frame_width(self) -> int:
        """Width of the videos' frames in pixels (``size`` for square frames)."""
        return self.width or self.size

    @property
    def num_compositions(self) -> int:
        return len(self.shapes) * len(self.colours) * len(self.motions)

    def content_hash(self, seed: int, length: int = 10) -> str:
        """Short hash of the config and the seed: the identity of the built world and its checkpoint.

        Pretraining options added after the first worlds were built (``HASHED_WHEN_ON``) enter the hash
        only when switched on, so a world built without them keeps its identity (and its baselines).
        """
        config = asdict(self)
        for name in [n for n, (switch, off) in HASHED_WHEN_ON.items() if config[switch] == off]:
            del config[name]
        payload = json.dumps({"config": config, "seed": int(seed)}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:length]

    def to_dict(self) -> dict:
        return asdict(self)


#: The design of the first worlds, which the default changed from (docs/world.md, "How the default world came to be").
FIRST_DESIGN: dict[str, Any] = {
    "window": (0.35, 0.7),
    "pretrain_negative_captions": 0,
    "pretrain_tail_every": 0,
    "lexicon_facets": False,
}

#: Size presets. ``default``: 120 compositions (96 seen, 24 novel), 1860 videos of 4 s, a ``bike-tiny``
#: CLIP pretrained for ~5 minutes on one core. ``test``: 12 compositions, 66 videos of 2 s, a
#: ``bike-micro`` CLIP pretrained for 100 small steps (~5 s in all); it keeps the first worlds' design
#: (``FIRST_DESIGN``: action over 35-70 % of the clip, no negative captions, padding grounding or
#: facets), so its checkpoint and the test world's baseline keep their identity.
SIZES: dict[str, WorldConfig] = {
    "default": WorldConfig(),
    "test": WorldConfig(
        shapes=("ball", "square"),
        colours=("red", "blue"),
        motions=("rising", "falling", "growing"),
        num_novel=4,
        frames=16,
        train_per_class=3,
        val_per_class=2,
        novel_train_per_class=2,
        novel_val_per_class=2,
        multilabel_classes=4,
        multilabel_train_videos=6,
        multilabel_test_videos=4,
        model="bike-micro",
        pretrain_frames=1024,
        pretrain_steps=100,
        pretrain_batch=32,
        pretrain_warmup=2,
        model_frames=4,
        **FIRST_DESIGN,
    ),
}


def world_config(size: str = "default", **overrides) -> WorldConfig:
    """The preset ``size`` with ``overrides`` applied; unknown sizes or fields are errors."""
    if size not in SIZES:
        raise ValueError(f"world size: got {size!r}; expected one of {sorted(SIZES)}")
    base = SIZES[size]
    unknown = [k for k in overrides if k not in base.__dataclass_fields__]
    if unknown:
        raise ValueError(f"world config: unknown field(s) {unknown}; expected fields of WorldConfig")
    return replace(base, **overrides)


#: Fields that say which bikebench wrote a world (a change rebuilds it in place), not how it is set.
VERSION_FIELDS = ("generator_version", "encoder_version", "numerics_version")


def parse_settings(items: Sequence[str], size: str = "default") -> dict[str, Any]:
    """``KEY=VALUE`` strings (``bikebench world build --set``) -> ``WorldConfig`` overrides of the preset
    ``size``, each value read as the type of the field (a tuple as comma-separated items).

    ``parse_settings(["window=0.6,0.9", "pretrain_tail_every=4"])`` ->
    ``{"window": (0.6, 0.9), "pretrain_tail_every": 4}``.
    """
    base = world_config(size)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ValueError(f"world setting {item!r}: expected KEY=VALUE, e.g. window=0.6,0.9")
        if key not in base.__dataclass_fields__ or key in VERSION_FIELDS:
            settable = sorted(k for k in base.__dataclass_fields__ if k not in VERSION_FIELDS)
            raise ValueError(f"world setting {item!r}: unknown field {key!r}; expected one of {settable}")
        current = getattr(base, key)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value: Any = text.lower() in ("true", "1", "yes")
            elif isinstance(current, tuple):
                kind = type(current[0]) if current else str
                value = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
                if len(value) != len(current) and key in ("window", "radius"):
                    raise ValueError
            else:
                value = type(current)(text)
        except ValueError:
            shape = (f"{len(current)} comma-separated {type(current[0]).__name__} values" if isinstance(current, tuple)
                     else type(current).__name__)
            raise ValueError(f"world setting {item!r}: field {key!r} expects {shape} (now {current!r})") from None
        out[key] = value
    world_config(size, **out)  # the config's own checks (e.g. window bounds) name the field
    return out


def settings_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The ``WorldConfig`` fields a built world was given beyond its size preset (``bikebench world build
    --set``), from its manifest's ``settings`` (absent: none), tuples restored from JSON lists."""
    size = manifest.get("size") or "default"
    preset = asdict(SIZES[size]) if size in SIZES else {}
    out: dict[str, Any] = {}
    for key, value in (manifest.get("settings") or {}).items():
        out[key] = tuple(value) if isinstance(preset.get(key), tuple) and isinstance(value, list) else value
    return out
