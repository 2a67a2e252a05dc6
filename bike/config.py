"""The resolved configuration of one BIKE run (what `python -m bike.train --config run.yaml` reads).

Every constant of the method is a field here whose default is the value the published numbers
were produced with (profile ``official``, the authors' released code). ``profile: paper`` swaps the
defaults of the switches where the code departs from the paper's formulas (see
``docs/bike-method.md``) for the formulas as written; a field given explicitly always wins.

The harness (``harness.spec``) builds these from YAML specs; ``bike`` only reads them. Unknown keys
are errors, so a typo in a spec never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Profile = Literal["official", "paper"]
#: Seeds are 63-bit non-negative integers (torch.manual_seed takes at most 64 bits).
MAX_SEED = 2**63 - 1


def _admits_bool(annotation: Any) -> bool:
    """Whether a field annotation accepts ``True``/``False`` as such (``bool``, ``Any``, a union with bool)."""
    import typing

    if annotation is bool or annotation is Any:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return any(isinstance(a, bool) for a in args)
    return any(_admits_bool(a) for a in args) if args else False


class StrictInputModel(BaseModel):
    """Pydantic base of every validated input (run configs, experiment and sweep specs): unknown fields
    are errors, a bool is accepted only where the field is a bool (``batch_size: true`` is not 1), and
    floats must be finite (``epochs: .inf`` never reaches a job)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: Any) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            if not _admits_bool(cls.model_fields[info.field_name].annotation):
                raise ValueError("expected a number or a string, not a boolean")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _finite_numbers(cls, value: Any) -> Any:
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise ValueError("expected a finite number")
        return value


class _Strict(StrictInputModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# Switches whose value depends on the fidelity profile: (section, field) -> {profile: value}.
PROFILE_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("model", "vcs_tokens"): {"official": "all", "paper": "words"},
    ("loss", "form"): {"official": "soft_kl", "paper": "ce"},
    ("loss", "learn_logit_scale"): {"official": True, "paper": False},
    ("fusion", "transform"): {"official": "softmax", "paper": "cosine"},
    ("eval", "single_view_frame"): {"official": "first", "paper": "centre"},
    ("train", "precision"): {"official": "fp16", "paper": "bf16"},
    ("eval", "zero_shot_ties"): {"official": "torch_topk", "paper": "lowest_index"},
    ("model", "vcs_renormalise"): {"official": False, "paper": True},
}


#: The category prompt of the released code (``ModelConfig.prompt``); one source for every module.
DEFAULT_PROMPT = "This is a video about {}"
#: Attributes per video in the paper's default sentence (``AttributesConfig.num_attributes``).
DEFAULT_NUM_ATTRIBUTES = 5
#: The attribute encoder of appendix A.2: "the text encoder of CLIP ViT-B/32" for every backbone.
ATTRIBUTE_TEXT_ENCODER = "ViT-B-32"
#: The attribute generator of appendix A.2 (full scale): CLIP ViT-L/14, 8 frames.
ATTRIBUTE_GENERATOR = "ViT-L-14"
#: Frames per video of the paper's default recipe (``ModelConfig.frames``; the world renders this many).
DEFAULT_FRAMES = 8

#: The short side the released code resizes 224-px input to (``scale_size`` in its ``test.py`` and
#: ``utils/Augmentation.py``); every other input size is resized to itself.
SHORT_SIDE_224 = 256


def released_short_side(resolution: int) -> int:
    """The released code's resize before cropping, train and test alike: ``256 if input_size == 224 else
    input_size``. The paper gives no sizes, so both profiles follow it. A 336-px model is resized to 336 and
    the world's 64-px CLIP to 64: on its square frames the three test crops are then the whole frame."""
    return SHORT_SIDE_224 if resolution == 224 else resolution


def _extrapolated_short_side(resolution: int) -> int:
    """The rule bikebench used before it followed the released code (256/224 for every size below 336):
    kept only so that the runs it changed get a new identity (:meth:`RunConfig.content_hash`)."""
    return 336 if resolution >= 336 else max(resolution * 8 // 7, resolution)


def profile_default(section: str, key: str, profile: Profile = "official") -> Any:
    """The default of a profile-dependent switch (:data:`PROFILE_DEFAULTS`) for ``profile``."""
    return PROFILE_DEFAULTS[(section, key)][profile]


class DataConfig(_Strict):
    """Where the videos are and how they are read."""

    dataset: str = Field("world", description="Dataset name, e.g. k400, k600, ucf101, hmdb51, anet, charades, world.")
    format: Literal["video_list", "frame_dir", "charades", "activitynet"] = "video_list"
    root: str = Field("", description="Directory the list entries are relative to.")
    train_root: Optional[str] = Field(None, description=(
        "Directory the train list's entries are relative to (null: root); the released configs give train and "
        "val their own roots (e.g. ActivityNet's instance frames and whole-video frames)."))
    val_root: Optional[str] = Field(None, description="Directory the val and test lists' entries are relative to (null: root).")
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    class_file: str = Field("", description="CSV `id,name` (Charades: `c000 name` lines).")
    frame_template: str = Field("img_{:05d}.jpg", description="Frame-directory image names, 1-based index.")
    decoder: Literal["decord", "pyav"] = Field("pyav", description=(
        "pyav decodes only the sampled frames, each from the keyframe before it (the same pixels as decord, "
        "about twice as fast on prepared videos; docs/data.md); decord is the alternative."))
    num_workers: int = Field(2, ge=0)
    bad_video_threshold: float = Field(0.01, ge=0.0, le=1.0, description="Training fails past this share of bad videos.")
    skip_bad_eval: bool = Field(False, description="Evaluation skips (and reports) bad videos instead of failing.")
    multi_label: bool = False
    expected_lines: dict[Literal["train", "val", "test", "classes"], int] = Field(default_factory=dict, description=(
        "Entry lines (header rows aside) each list must have, keyed train / val / test (classes: the number of "
        "classes); reading a list of another length is an error. The shipped specs give the released files' counts."))
    exclude_list: Optional[str] = Field(None, description=(
        "File of list entries to leave out of every split (one per line, `#` comments; `bikebench data check "
        "--write-exclude` writes it). The run logs how many it excluded; null: nothing is excluded."))
    tuning_holdout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Share of the training list held out for tuning (the `tune` split). 0: train on the whole list, as the "
        "paper and the released code do; set it only on a run that is tuned on (the smoke scale sets 0.1)."))

    def root_for(self, split: str) -> str:
        """Directory the entries of ``split``'s list are relative to (``train_root`` / ``val_root``, else ``root``)."""
        specific = self.train_root if split in ("train", "tune") else self.val_root
        return specific if specific else self.root


class ModelConfig(_Strict):
    """Backbone, video branch and category encoder."""

    backbone: str = "ViT-B-32"
    pretrained: Optional[str] = Field("openai", description="open_clip tag, local checkpoint path, or null (random).")
    frames: int = Field(DEFAULT_FRAMES, ge=1)
    resolution: int = Field(224, ge=16)
    temporal: Literal["none", "transformer"] = "transformer"
    temporal_layers: int = Field(6, ge=1)
    temporal_ln_eps: float = Field(1e-12, gt=0.0, description="LayerNorm ε of the temporal transformer (released code: 1e-12).")
    interaction: Literal["mean", "vcs"] = "vcs"
    vcs_tokens: Literal["all", "words"] = profile_default("model", "vcs_tokens")
    vcs_tau: float = Field(0.01, gt=0.0)
    vcs_renormalise: bool = Field(profile_default("model", "vcs_renormalise"), description=(
        "VCS logit as Eq. 2's cosine (the saliency-weighted video embedding re-normalised; paper) or its "
        "plain dot product with the normalised [CLS] (released code)."))
    saliency_source: Literal["words", "cls"] = "words"
    recognition_source: Literal["cls", "words"] = "cls"
    recognition_tokens: Literal["words", "all"] = Field("words", description=(
        "With recognition_source=words (Table 6b 'Word Emb.'): average the class-name tokens (`words`, the "
        "paper's text; the released code has no such path) or all 77 positions, padding included (`all`)."))
    prompt: str = DEFAULT_PROMPT
    finetune_category_encoder: bool = False
    activation_checkpointing: bool = False

    @property
    def needs_word_mask(self) -> bool:
        """Whether the video branch needs the class-name mask: VCS over the words, or "Word Emb."
        recognition over the class-name tokens (``bike.video_branch.VideoBranch.needs_word_mask``)."""
        return self.vcs_tokens == "words" or (self.recognition_source == "words" and self.recognition_tokens == "words")


class AttributesConfig(_Strict):
    """The Video-to-Text attributes branch."""

    enabled: bool = True
    lexicon: str = Field("k400", description="`k400`, `imagenet1k`, `world`, `world_objects` or a path to a text file.")
    num_attributes: int = Field(DEFAULT_NUM_ATTRIBUTES, ge=1)
    max_attributes: int = Field(10, ge=1, description="How many ranked phrases are cached per video.")
    generator_backbone: Optional[str] = Field(None, description=(
        "Frozen CLIP that ranks the lexicon (null: model.backbone; the full scale sets ViT-L-14, appendix A.2)."))
    generator_pretrained: Optional[str] = None
    text_encoder: str = Field(ATTRIBUTE_TEXT_ENCODER, description=(
        "CLIP whose text tower encodes attribute sentences and class names for the attributes branch: the text "
        "tower of ViT-B/32 for every backbone (appendix A.2). The run's own text tower when it is the same model "
        "and weights as model.backbone / model.pretrained; else a separate frozen one."))
    text_encoder_pretrained: Optional[str] = Field("openai", description="Weights of text_encoder (tag or file).")
    separator: str = ","
    prompt_attributes: bool = True
    prompt_categories: bool = True
    train: bool = Field(False, description="Stage 2: train the attribute heads after the video branch.")
    logit_scale: Literal["restart", "inherit"] = Field("restart", description=(
        "Stage 2's logit scale: `restart` at its initial value (ln 1/loss.tau), as the released "
        "train_attributes.py, which starts from a fresh CLIP; `inherit` continues stage 1's learned value."))
    finetune_text_tower: bool = False

    def generator(self, model: "ModelConfig") -> tuple[str, Optional[str]]:
        """(backbone, weights) of the CLIP that ranks the lexicon: the fields, else the run's model."""
        if self.generator_backbone:
            return self.generator_backbone, self.generator_pretrained
        return model.backbone, self.generator_pretrained or model.pretrained

    def shares_text_tower(self, model: "ModelConfig") -> bool:
        """Whether the attribute text encoder is the run's own text tower (same model, same weights)."""
        return (self.text_encoder.replace("/", "-") == model.backbone.replace("/", "-")
                and self.text_encoder_pretrained == model.pretrained)

    @model_validator(mode="after")
    def _k_within_cache(self) -> "AttributesConfig":
        if self.num_attributes > self.max_attributes:
            raise ValueError(
                f"num_attributes={self.num_attributes} exceeds max_attributes={self.max_attributes} (the cached ranking)"
            )
        return self


#: λ of the released code's fusion (hard-coded 0.7 video / 0.3 attributes): the ``official`` profile's.
OFFICIAL_LAMBDA = 0.7
#: λ the paper's text gives per backbone family: the ``paper`` profile's.
PAPER_LAMBDA = {"ViT-B": 0.6, "ViT-L": 0.8}


class FusionConfig(_Strict):
    """S = lam * S_V + (1 - lam) * S_A (Eq. 4)."""

    lam: Optional[float] = Field(None, ge=0.0, le=1.0, description=(
        "null: the profile's λ — official 0.7 (released code), paper 0.6 for ViT-B and 0.8 for ViT-L (the text)."))
    transform: Literal["softmax", "cosine"] = profile_default("fusion", "transform")


class LossConfig(_Strict):
    form: Literal["soft_kl", "ce"] = profile_default("loss", "form")
    learn_logit_scale: bool = profile_default("loss", "learn_logit_scale")
    tau: float = Field(0.01, gt=0.0, description="Initial (or fixed) temperature; logit scale = 1/tau.")
    target_scale: float = Field(10.0, gt=0.0, description="soft_kl target = softmax(target_scale * G).")


class TrainConfig(_Strict):
    """Appendix Table A.1."""

    epochs: float = Field(30, gt=0)
    batch_size: int = Field(256, ge=1, description="Global batch across all ranks.")
    grad_accum: int = Field(1, ge=1)
    lr_new: float = 5e-5
    lr_clip: float = 5e-6
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(5, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(profile_default("train", "precision"), description=(
        "Mixed precision on CUDA (CPU runs fp32): official fp16 autocast with a GradScaler (the released "
        "`--precision amp`), paper bf16 (the text says only 'mixed precision')."))
    short_side: Optional[int] = Field(None, description=(
        "Short side the frames are resized to before cropping (train and test). null: the released code's "
        "rule, 256 for 224-px models and the model's own resolution for every other size (336 for 336-px "
        "models, 64 for the world's CLIP)."))
    crop_area: tuple[float, float] = (0.08, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    grayscale_p: float = 0.2
    few_shot: Optional[int] = Field(None, ge=1, description="K videos per class from the training list.")
    few_shot_seed: int = Field(0, ge=0, le=MAX_SEED)
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimiser steps (smoke runs).")
    log_every: int = Field(10, ge=1)
    select_on: Literal["val", "tune", "none"] = Field("val", description="Split that selects the best checkpoint.")


class EvalConfig(_Strict):
    clips: int = Field(1, ge=1)
    crops: Literal[1, 3] = 1
    single_view_frame: Literal["first", "centre"] = profile_default("eval", "single_view_frame")
    view_aggregation: Literal["softmax_mean", "logit_mean"] = "softmax_mean"
    protocol: Literal["closed", "zero_shot_half", "zero_shot_full", "zero_shot_k600", "multi_label"] = "closed"
    zero_shot_path: Literal["frame", "full"] = "frame"
    zero_shot_splits: int = Field(10, ge=1)
    zero_shot_ties: Literal["torch_topk", "lowest_index"] = Field(profile_default("eval", "zero_shot_ties"), description=(
        "Zero-shot top-k among equal scores: as the released accuracy() (`torch_topk`: the first k of "
        "torch.topk(scores, 5)) or the lower class index first (`lowest_index`)."))
    k600_split_files: list[str] = Field(default_factory=list, description=(
        "Kinetics-600 zero-shot class files, one per split: the released `k160_labels_split{1,2,3}.csv` (`id,name`, "
        "160 K600 class names). Without k600_split_lists they name subsets of data.class_file's classes; with it, "
        "file i is split i's own class file."))
    k600_split_lists: Optional[list[str]] = Field(None, description=(
        "Kinetics-600 zero-shot video lists, one per split, as the authors evaluate (the released "
        "`test_split{1,2,3}_exist.txt`, labels indexing k600_split_files[i]). When set, zero_shot_k600 scores list i "
        "against the classes of k600_split_files[i] (a closed 160-way evaluation per split, read like data.val_list: "
        "data.format, data.val_root or data.root) and reports mean and population std over the splits; null or "
        "empty (the default; an empty list is stored as null, so existing run ids stay as they were): data.val_list "
        "against data.class_file, with k600_split_files as class subsets."))
    batch_size: int = Field(32, ge=1)
    save_frame_embeddings: bool = False
    split: Literal["val", "test", "tune"] = "val"
    figures: int = Field(8, ge=0, description=(
        "Sample videos of `split` drawn in the run's pictures (<run_dir>/figures/: temporal saliency, generated "
        "attributes; bike.engine.figures); 0: no pictures."))

    @field_validator("k600_split_lists", mode="after")
    @classmethod
    def _no_split_lists_is_null(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        return value or None

    @model_validator(mode="after")
    def _k600_split_lists_pair_with_their_class_files(self) -> "EvalConfig":
        lists, files = self.k600_split_lists, self.k600_split_files
        if not lists:
            return self
        if self.protocol != "zero_shot_k600":
            raise ValueError(f"eval.k600_split_lists: got {len(lists)} list(s) with eval.protocol={self.protocol!r}; "
                             "the split lists are read by eval.protocol zero_shot_k600 only (expected an empty list)")
        if len(lists) != len(files):
            raise ValueError(f"eval.k600_split_lists: got {len(lists)} list(s) but eval.k600_split_files has {len(files)} "
                             "class file(s); expected one class file per split list (list i is labelled by file i)")
        if self.split == "tune":
            raise ValueError("eval.k600_split_lists: eval.split 'tune' is held out of the training list; the split lists "
                             "replace the val or test list: expected eval.split val or test")
        return self


class NumericsConfig(_Strict):
    """How the job's CPU computes (not a constant of the method; see ``bike.numerics``)."""

    pinned: bool = Field(
        False, description="Pinned CPU kernels and one thread: the same bytes on every x86-64 CPU with AVX2 (smoke scale).")


def _without_nulls(value: Any) -> Any:
    """``value`` with every ``None`` entry of every mapping removed (lists keep their items)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


class RunConfig(_Strict):
    """One run: a stage of training and/or an evaluation. Its content hash is its identity."""

    name: str = "run"
    profile: Profile = "official"
    stage: Literal["video", "attributes", "eval"] = "video"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    init_from: Optional[str] = Field(None, description="Checkpoint file or run directory to start from.")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    attributes: AttributesConfig = AttributesConfig()
    fusion: FusionConfig = FusionConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    numerics: NumericsConfig = NumericsConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """Fill the profile-dependent switches the user left out with the profile's values."""
        if not isinstance(data, dict):
            return data
        profile = data.get("profile", "official")
        if profile not in ("official", "paper"):
            return data  # the Literal check reports it
        out = dict(data)
        for (section, key), values in PROFILE_DEFAULTS.items():
            sec = out.get(section)
            if isinstance(sec, BaseModel):
                sec = sec.model_dump()
            sec = dict(sec or {})
            sec.setdefault(key, values[profile])
            out[section] = sec
        return out

    # ------------------------------------------------------------------ derived values
    @property
    def fusion_lambda(self) -> float:
        """λ: the field when set; else the profile's: ``official`` 0.7 (the released code's fusion is
        hard-coded to 0.7 / 0.3), ``paper`` 0.8 for ViT-L backbones and 0.6 otherwise (the text)."""
        if self.fusion.lam is not None:
            return self.fusion.lam
        if self.profile == "official":
            return OFFICIAL_LAMBDA
        large = "L-14" in self.model.backbone or "L/14" in self.model.backbone
        return PAPER_LAMBDA["ViT-L"] if large else PAPER_LAMBDA["ViT-B"]

    @model_validator(mode="after")
    def _text_tower_finetune_needs_the_shared_tower(self) -> "RunConfig":
        if self.attributes.finetune_text_tower and not self.attributes.shares_text_tower(self.model):
            raise ValueError(
                f"attributes.finetune_text_tower needs the attribute encoder to be the run's own text tower, but "
                f"attributes.text_encoder={self.attributes.text_encoder!r} ({self.attributes.text_encoder_pretrained!r}) "
                f"differs from model.backbone={self.model.backbone!r} ({self.model.pretrained!r})"
            )
        return self

    def resolved(self) -> dict[str, Any]:
        """The config as JSON-ready data with every value that depends on other fields filled in:
        ``fusion.lam`` (the profile's λ), ``train.short_side``, the attribute generator and its
        weights (null = the run's backbone), the lexicon as a file. What ``--dry-run --json`` shows."""
        from bike.text import lexicon_path

        data = self.model_dump(mode="json")
        data["fusion"]["lam"] = self.fusion_lambda
        data["train"]["short_side"] = self.short_side
        a = self.attributes
        data["attributes"]["generator_backbone"], data["attributes"]["generator_pretrained"] = a.generator(self.model)
        data["attributes"]["lexicon"] = str(lexicon_path(a.lexicon))
        data["attributes"]["text_encoder_shared"] = a.shares_text_tower(self.model)
        return data

    @property
    def short_side(self) -> int:
        if self.train.short_side is not None:
            return self.train.short_side
        return released_short_side(self.model.resolution)

    @property
    def logit_scale_init(self) -> float:
        return math.log(1.0 / self.loss.tau)

    def content_hash(self, length: int = 12) -> str:
        """Hash of the resolved content (sorted JSON). The run's identity; `name` is excluded, and so is
        every field that is null (unset optional fields), so that adding an optional field to the schema
        leaves the identity of existing runs unchanged.

        A default that is derived from other fields enters the hash with its value where its rule once
        gave another one, so that exactly the runs whose behaviour changed get a new identity (and a
        results directory never resumes their old numbers): ``train.short_side`` where the released rule
        differs from the 256/224 extrapolation bikebench used before (every resolution but 224 and 336);
        there, an explicit ``train.short_side`` of the same value is the same run."""
        payload = _without_nulls(self.model_dump(mode="json", exclude={"name"}))
        if self.train.short_side is None and self.short_side != _extrapolated_short_side(self.model.resolution):
            payload.setdefault("train", {})["short_side"] = self.short_side
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:length]

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        """Read and validate a run config; errors name the file and the dotted field path."""
        from pydantic import ValidationError

        path = Path(path)
        raw = read_yaml_file(path) or {}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(path, exc)) from None


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names file, field, value and what is allowed."""


def read_yaml_file(path: str | Path, error: type[Exception] = ConfigError, what: str = "file",
                   loader: Any = None) -> Any:
    """The parsed content of a YAML file; a missing file or bad YAML raises ``error`` naming the path.

    ``what`` names the file in the not-found message (``"spec file"``); ``loader``: a yaml Loader
    class (default ``yaml.SafeLoader``).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory; expected a YAML {what}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); expected a YAML {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        return yaml.load(text, Loader=loader or yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {short_text(str(exc), 1000)}") from None


def short_text(text: str, limit: int = 200) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out (messages stay small)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` of at most about ``limit`` characters (a huge value never makes a huge message)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxtuple, r.maxlevel = limit, limit, 10, 10, 10, 3
    return short_text(r.repr(value), limit)


def format_validation_error(source: str | Path, exc: Any, prefix: str = "") -> str:
    """Render a pydantic ValidationError as `file: field.path: got X; expected Y` lines."""
    lines = [f"{source}: invalid configuration ({exc.error_count()} error(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        got = short_repr(err.get("input"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; allowed fields are listed in bike/config.py)"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"expected one of {err['ctx']['expected']}"
        lines.append(f"  {loc or '<root>'}: got {got}; {msg}")
    return "\n".join(lines)
