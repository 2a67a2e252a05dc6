"""Experiment specs: YAML files in ``experiments/`` validated with pydantic, resolved to RunConfigs.

A spec describes one experiment family on one dataset and the named *variants* that fill the cells
of a table::

    name: table6
    family: general            # general | few-shot | zero-shot-half | zero-shot-full | multi-label
    dataset:                   # DataConfig fields (`name` is DataConfig.dataset); `${ENV}` expanded
      name: k400
      root: ${BIKE_DATA:-data}/k400/videos
      train_list: ${BIKE_DATA:-data}/k400/train.txt
      ...
    model: {backbone: ViT-B-32, frames: 8}      # ModelConfig fields
    train: {...}  eval: {...}  attributes: {...}  fusion: {...}  loss: {...}
    profile: official
    scales:                    # dotted overrides per scale (on top of the built-in scale defaults)
      smoke: {train.max_steps: 4}
      full: {}
    resources: {full: {timeout_min: 2880, slurm: {partition: gpu, gpus_per_node: 8}}}
    variants:
      baseline:
        set: {model.interaction: mean}           # dotted overrides
        cells: [{table: 6a, row: baseline, column: top1, metric: video_top1}]
      ours:
        stage: attributes
        init_from: {variant: ours_video}         # or {spec: experiments/k400.yaml, variant: x} or a path
        scales: {smoke: {attributes.lexicon: world}}
        run_at: [smoke, full]

The layers of one variant's configuration, later wins: family defaults → the spec's sections →
built-in scale defaults (:data:`BUILTIN_SCALES`; at smoke scale the embedded world, tiny CLIP
``bike-tiny`` and a few steps) → ``scales.<scale>`` → ``variants.<v>.set`` →
``variants.<v>.scales.<scale>`` → ``variants.<v>.stage`` → ``key=value`` overrides from the command
line. When a layer sets ``dataset.world`` (a world split, or ``auto`` for the family's), the world's
DataConfig fields are inserted just before that layer and the dataset fields of the earlier layers
but the family defaults (the paper dataset's) are dropped; dataset fields set in the same or later layers still win. ``${world.checkpoint}``,
``${world.model}``, ``${world.frames}``, ``${world.resolution}`` and ``${world.root}`` are filled from the
built world; ``attributes.lexicon: world`` / ``world_objects`` name the built world's lexicon files.

Every error names the file, the dotted field path, the bad value and what is allowed, and is raised
while loading or resolving, before anything is submitted. A built-in scale layer that replaces a value
the spec sets explicitly (e.g. ``model.frames: 16`` at smoke scale, where the world's frame count wins)
is reported with a :class:`ScaleOverrideWarning` naming the field and both values.

Modules, each with one job (every name below is re-exported here):

* :mod:`harness.spec.errors`: :class:`SpecError` and the formatting of validation errors;
* :mod:`harness.spec.models`: the pydantic spec models (:class:`Spec`, :class:`VariantSpec`,
  :class:`ResourceSpec`, :class:`SlurmSpec`, ...) and the tables of settable fields;
* :mod:`harness.spec.overrides`: dotted ``key=value`` overrides and ``${VAR}`` expansion;
* :mod:`harness.spec.load`: reading and validating a spec file (:func:`load_spec`);
* :mod:`harness.spec.resolve`: the layer resolution into a RunConfig (:func:`resolve_config`).
"""

from __future__ import annotations

from harness.spec.errors import SpecError
from harness.spec.models import (
    DATASET_EXTRA_FIELDS,
    DEFAULT_RESOURCES,
    FAMILY_WORLD,
    SCALES,
    SECTION_MODELS,
    TOP_LEVEL_FIELDS,
    WORLD_SPLITS,
    CellSpec,
    Family,
    InitFromSpec,
    PaperCell,
    Profile,
    ResourceSpec,
    ScaleName,
    SlurmSpec,
    Spec,
    Stage,
    VariantSpec,
)
from harness.spec.overrides import canonical_path, expand_env, flatten_overrides, parse_overrides
from harness.spec.load import load_spec, spec_from_dict
from harness.spec.resolve import (
    BUILTIN_SCALES,
    FAMILY_DEFAULTS,
    SMOKE_BATCH,
    SMOKE_EPOCHS,
    SMOKE_LOG_EVERY,
    SMOKE_MAX_STEPS,
    Layer,
    ScaleOverrideWarning,
    WorldSplit,
    inherited_model_fields,
    resolve_config,
    substitute_world,
    variant_layers,
    world_split_of,
)

__all__ = [
    "BUILTIN_SCALES",
    "DATASET_EXTRA_FIELDS",
    "DEFAULT_RESOURCES",
    "FAMILY_DEFAULTS",
    "FAMILY_WORLD",
    "SCALES",
    "SECTION_MODELS",
    "SMOKE_BATCH",
    "SMOKE_EPOCHS",
    "SMOKE_LOG_EVERY",
    "SMOKE_MAX_STEPS",
    "TOP_LEVEL_FIELDS",
    "WORLD_SPLITS",
    "CellSpec",
    "Family",
    "InitFromSpec",
    "Layer",
    "PaperCell",
    "Profile",
    "ResourceSpec",
    "ScaleName",
    "ScaleOverrideWarning",
    "SlurmSpec",
    "Spec",
    "SpecError",
    "Stage",
    "VariantSpec",
    "WorldSplit",
    "canonical_path",
    "expand_env",
    "flatten_overrides",
    "inherited_model_fields",
    "load_spec",
    "parse_overrides",
    "resolve_config",
    "spec_from_dict",
    "substitute_world",
    "variant_layers",
    "world_split_of",
]
