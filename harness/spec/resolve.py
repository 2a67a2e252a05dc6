"""Resolution of one variant at one scale into a validated RunConfig: the layers (family defaults →
spec → built-in scale → ``scales.<scale>`` → variant → command line; see :mod:`harness.spec`), the
embedded world's fields and ``${world.x}`` values, and the warning when a built-in scale layer
replaces a value the spec sets explicitly (:class:`ScaleOverrideWarning`)."""

from __future__ import annotations

import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pydantic import ValidationError

from bike.config import ATTRIBUTE_GENERATOR, RunConfig, format_validation_error
from harness.spec.errors import SpecError
from harness.spec.models import FAMILY_WORLD, SCALES, SECTION_MODELS, InitFromSpec, Spec
from harness.spec.overrides import _WORLD_RE, _is_placeholder, canonical_path, flatten_overrides

# Dotted defaults each family starts from (the spec's own fields override them).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "general": {"eval.protocol": "closed"},
    "few-shot": {"eval.protocol": "closed"},
    "zero-shot-half": {"eval.protocol": "zero_shot_half", "stage": "eval"},
    "zero-shot-full": {"eval.protocol": "zero_shot_full", "stage": "eval"},
    "multi-label": {"eval.protocol": "multi_label", "dataset.multi_label": True},
}

# Built-in scale defaults. Smoke: the embedded world (bike.world), its tiny pretrained CLIP and a
# few optimiser steps on small batches, so a whole table runs on a laptop CPU in minutes.
SMOKE_EPOCHS = 2
SMOKE_MAX_STEPS = 20
SMOKE_BATCH = 8
#: A metrics line every 5 steps: logging every step cost MLflow 1.6 % of a tiny-model step (make bench).
SMOKE_LOG_EVERY = 5
BUILTIN_SCALES: dict[str, dict[str, Any]] = {
    "smoke": {
        "dataset.world": "auto",
        "dataset.num_workers": 0,
        # `make tune` tunes λ and k on the held-out `tune` split of Table 6's runs; full-scale runs train
        # on the whole list (DataConfig.tuning_holdout = 0), as the paper's did
        "dataset.tuning_holdout": 0.1,
        "model.backbone": "${world.model}",
        "model.pretrained": "${world.checkpoint}",
        "model.frames": "${world.frames}",
        "model.resolution": "${world.resolution}",
        "attributes.lexicon": "world",
        # the world's tiny CLIP stands in for the attribute encoder (ViT-B/32) and generator (ViT-L/14)
        "attributes.text_encoder": "${world.model}",
        "attributes.text_encoder_pretrained": "${world.checkpoint}",
        # null (the run's own CLIP) unless the world's generator is stronger than its backbone
        "attributes.generator_pretrained": "${world.generator}",
        "train.epochs": SMOKE_EPOCHS,
        "train.warmup_epochs": 0,
        "train.max_steps": SMOKE_MAX_STEPS,
        "train.batch_size": SMOKE_BATCH,
        "train.precision": "fp32",
        "train.log_every": SMOKE_LOG_EVERY,
        "train.select_on": "none",  # no per-epoch validation: the last checkpoint is evaluated
        "eval.batch_size": SMOKE_BATCH,
        "numerics.pinned": True,  # the same numbers on every x86-64 CPU with AVX2 (bike.numerics)
    },
    "full": {},
}
#: Per-scale defaults below the spec (a spec, a variant or the command line that sets one wins; the
#: built-in scale layer above replaces what the spec sets). Full: appendix A.2's attribute generator,
#: CLIP ViT-L/14 (8 frames), for every backbone.
SCALE_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": {},
    "full": {
        "attributes.generator_backbone": ATTRIBUTE_GENERATOR,
        "attributes.generator_pretrained": "openai",
    },
}


# ---------------------------------------------------------------------------------- resolution
@dataclass
class Layer:
    """One layer of dotted overrides and where it came from (for error messages)."""

    source: str
    values: dict[tuple[str, ...], Any] = field(default_factory=dict)


def inherited_model_fields(spec: Spec, variant: str, scale: str, _seen: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """The ``model.*`` overrides of the variant this one starts from (``init_from: {variant: X}`` in the
    same spec), recursively: a stage-2 or evaluation run must build the architecture of the checkpoint it
    loads. The variant's own ``set`` still wins."""
    v = spec.variants[variant]
    ref = v.init_from
    if not isinstance(ref, InitFromSpec) or ref.spec is not None or ref.variant not in spec.variants:
        return {}
    if ref.variant in _seen:
        return {}
    parent = spec.variants[ref.variant]
    out = dict(inherited_model_fields(spec, ref.variant, scale, _seen + (variant,)))
    for where, values in ((f"variants.{ref.variant}.set", parent.set),
                          (f"variants.{ref.variant}.scales.{scale}", parent.scales.get(scale, {}))):
        for path, value in flatten_overrides(values, spec.path, where).items():
            if path[0] == "model":
                out[path] = value
    return out


def variant_layers(spec: Spec, variant: str, scale: str) -> list[Layer]:
    """The ordered layers of one variant at one scale (later wins); see the module docstring."""
    if variant not in spec.variants:
        raise SpecError(f"{spec.path}: no variant {variant!r}; variants: {', '.join(spec.variants)}")
    if scale not in SCALES:
        raise SpecError(f"{spec.path}: scale {scale!r}; expected one of {SCALES}")
    src = spec.path
    v = spec.variants[variant]
    layers = [Layer(f"family defaults ({spec.family})", flatten_overrides(FAMILY_DEFAULTS[spec.family], src, "family")),
              Layer(f"{scale} scale defaults", flatten_overrides(SCALE_DEFAULTS[scale], src, f"defaults.{scale}"))]
    base: dict[tuple[str, ...], Any] = {}
    for name in ("profile", "seed", "stage"):
        value = getattr(spec, name)
        if value is not None:
            base[(name,)] = value
    for section in SECTION_MODELS:
        for key, value in getattr(spec, section).items():
            base[canonical_path(f"{section}.{key}", src, section)] = value
    layers.append(Layer("spec", base))
    layers.append(Layer(f"built-in {scale} scale", flatten_overrides(BUILTIN_SCALES[scale], src, f"builtin.{scale}")))
    layers.append(Layer(f"scales.{scale}", flatten_overrides(spec.scales.get(scale, {}), src, f"scales.{scale}")))
    inherited = inherited_model_fields(spec, variant, scale)
    if inherited:
        parent = spec.variants[variant].init_from.variant  # type: ignore[union-attr]
        layers.append(Layer(f"model of variants.{parent} (init_from)", inherited))
    layers.append(Layer(f"variants.{variant}.set", flatten_overrides(v.set, src, f"variants.{variant}.set")))
    where = f"variants.{variant}.scales.{scale}"
    layers.append(Layer(where, flatten_overrides(v.scales.get(scale, {}), src, where)))
    if v.stage is not None:
        layers.append(Layer(f"variants.{variant}.stage", {("stage",): v.stage}))
    if spec.cli_overrides:
        layers.append(Layer("command line", flatten_overrides(spec.cli_overrides, "command line", "")))
    return layers


def world_split_of(spec: Spec, layers: Sequence[Layer]) -> tuple[Optional[str], int]:
    """(world split, index of the last layer that set ``dataset.world``) or (None, -1)."""
    split, index = None, -1
    for i, layer in enumerate(layers):
        if ("dataset", "world") in layer.values:
            split, index = layer.values[("dataset", "world")], i
    if split in (None, False):
        return None, -1
    if split == "auto":
        split = FAMILY_WORLD[spec.family]
    return str(split), index


def substitute_world(value: Any, values: Mapping[str, Any], source: str, where: str) -> Any:
    """Replace ``${world.x}``: a whole-string placeholder keeps the value's type."""
    if not _is_placeholder(value):
        return value
    whole = _WORLD_RE.fullmatch(value)

    def lookup(name: str) -> Any:
        if name not in values:
            raise SpecError(
                f"{source}: {where}: got {value!r}; no world value {name!r} "
                f"(known: {', '.join(sorted(values)) or 'none: no world in this configuration'})"
            )
        return values[name]

    if whole:
        return lookup(whole.group(1))
    return _WORLD_RE.sub(lambda m: str(lookup(m.group(1))), value)


class ScaleOverrideWarning(UserWarning):
    """A built-in scale layer replaced a value the spec sets explicitly (the message names the field and
    both values); the spec's ``scales.<scale>`` section keeps a value at that scale."""


def scale_overrides(
    layers: Sequence[Layer], merged: Mapping[tuple[str, ...], tuple[Any, str]], world_values: Mapping[str, Any], source: str
) -> list[tuple[str, Any, Any]]:
    """``(dotted field, the spec's value, the built-in scale's value)`` for every field the spec layer sets
    whose value the built-in scale layer replaces in ``merged`` (later layers that set it again win, and
    equal values are no replacement). ``${world.x}`` placeholders are compared filled in."""
    spec_layer = next((layer for layer in layers if layer.source == "spec"), None)
    builtin = next((layer for layer in layers if layer.source.startswith("built-in ")), None)
    if spec_layer is None or builtin is None:
        return []
    out: list[tuple[str, Any, Any]] = []
    for path, value in builtin.values.items():
        if path not in spec_layer.values or merged.get(path, (None, ""))[1] != builtin.source:
            continue
        name = ".".join(path)
        try:
            new = substitute_world(value, world_values, source, f"{builtin.source}: {name}")
            old = substitute_world(spec_layer.values[path], world_values, source, f"spec: {name}")
        except SpecError:
            continue  # reported with its own message when the configuration is resolved below
        if old != new:
            out.append((name, old, new))
    return out


@dataclass
class WorldSplit:
    """What the embedded world contributes to one split: DataConfig fields and ``${world.x}`` values."""

    data: dict[str, Any]
    values: dict[str, Any]


def resolve_config(
    spec: Spec,
    variant: str,
    scale: str,
    world: Optional[typing.Callable[[str], WorldSplit]] = None,
    init_from: Optional[str] = None,
) -> RunConfig:
    """Resolve one variant at one scale to a validated RunConfig.

    ``world(split)`` supplies the embedded world when a layer sets ``dataset.world``; ``init_from``
    (a run directory or checkpoint path) is the already-resolved start point of the variant.
    """
    source = str(spec.path)
    layers = variant_layers(spec, variant, scale)
    split, at = world_split_of(spec, layers)
    world_values: dict[str, Any] = {}
    if split is not None:
        if world is None:
            raise SpecError(
                f"{source}: variant {variant!r} at scale {scale!r} uses the embedded world (dataset.world: {split}) "
                "but no world was provided; run `bikebench world build` first"
            )
        ws = world(split)
        world_values = dict(ws.values)
        data = {}
        for key, value in ws.data.items():
            data[("dataset", "name" if key == "dataset" else key)] = value
        for layer in layers[1:at]:  # the paper dataset's fields do not leak into the world's
            layer.values = {p: v for p, v in layer.values.items() if p[0] != "dataset"}
        layers.insert(at, Layer(f"world split {split}", data))
    merged: dict[tuple[str, ...], tuple[Any, str]] = {}
    for layer in layers:
        for path, value in layer.values.items():
            merged[path] = (value, layer.source)
    merged.pop(("dataset", "world"), None)
    replaced = scale_overrides(layers, merged, world_values, source)
    if replaced:
        fields = ", ".join(f"{name} = {old!r} (spec) -> {new!r}" for name, old, new in replaced)
        warnings.warn(
            f"{source}: the built-in {scale} scale replaces value(s) the spec sets explicitly: {fields}; "
            f"set them under scales.{scale} (or variants.<v>.scales.{scale}) to keep them",
            ScaleOverrideWarning,
            stacklevel=2,
        )

    v = spec.variants[variant]
    if init_from is None and isinstance(v.init_from, str):
        init_from = str(Path(v.init_from).expanduser().resolve())
    if init_from is not None:
        merged[("init_from",)] = (init_from, f"variants.{variant}.init_from")

    nested: dict[str, Any] = {"name": f"{spec.name}.{variant}"}
    provenance: dict[str, str] = {}
    world_lexicons = world_values.get("lexicons") or {}
    for path, (value, src) in merged.items():
        value = substitute_world(value, world_values, source, f"{src}: {'.'.join(path)}")
        if path == ("attributes", "lexicon") and isinstance(value, str) and value in world_lexicons:
            value = world_lexicons[value]  # a world lexicon name -> the built world's file
        section = "data" if path[0] == "dataset" else path[0]
        if len(path) == 1:
            nested[section] = value
            provenance[section] = src
        else:
            key = "dataset" if (path[0] == "dataset" and path[1] == "name") else path[1]
            nested.setdefault(section, {})[key] = value
            provenance[f"{section}.{key}"] = src
    if spec.family == "few-shot" and nested.get("train", {}).get("few_shot") is None:
        raise SpecError(
            f"{source}: variant {variant!r} (scale {scale}): train.few_shot: got None; "
            "few-shot specs must set K videos per class (an integer >= 1)"
        )
    try:
        return RunConfig.model_validate(nested)
    except ValidationError as exc:
        head = f"{source} (variant {variant!r}, scale {scale})"
        lines = format_validation_error(head, exc).splitlines()
        for i, err in enumerate(exc.errors()):
            loc = ".".join(str(p) for p in err["loc"][:2])
            src = provenance.get(loc) or provenance.get(loc.split(".")[0])
            if src:
                lines[i + 1] += f" (set by {src})"
        raise SpecError("\n".join(lines)) from None

