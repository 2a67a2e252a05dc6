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
while loading or resolving, before anything is submitted.
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from bike.config import (
    AttributesConfig,
    ConfigError,
    read_yaml_file,
    DataConfig,
    EvalConfig,
    FusionConfig,
    LossConfig,
    ModelConfig,
    NumericsConfig,
    RunConfig,
    TrainConfig,
    format_validation_error,
)

ScaleName = Literal["smoke", "full"]
SCALES: tuple[str, ...] = ("smoke", "full")
Family = Literal["general", "few-shot", "zero-shot-half", "zero-shot-full", "multi-label"]
Stage = Literal["video", "attributes", "eval"]
Profile = Literal["official", "paper"]

# World split used by each family when a spec says `dataset: {world: auto}`.
FAMILY_WORLD: dict[str, str] = {
    "general": "general",
    "few-shot": "few_shot",
    "zero-shot-half": "zero_shot",
    "zero-shot-full": "zero_shot",
    "multi-label": "multi_label",
}
WORLD_SPLITS: tuple[str, ...] = ("general", "few_shot", "zero_shot", "multi_label")

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
        "model.backbone": "${world.model}",
        "model.pretrained": "${world.checkpoint}",
        "model.frames": "${world.frames}",
        "model.resolution": "${world.resolution}",
        "attributes.lexicon": "world",
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

# Spec section -> the RunConfig section model that validates it.
SECTION_MODELS: dict[str, type[BaseModel]] = {
    "dataset": DataConfig,
    "model": ModelConfig,
    "attributes": AttributesConfig,
    "fusion": FusionConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "numerics": NumericsConfig,
}
TOP_LEVEL_FIELDS: tuple[str, ...] = ("profile", "seed", "stage", "init_from")
# Spec-only dataset keys: `world` (a world split or `auto`) and `name` (= DataConfig.dataset).
DATASET_EXTRA_FIELDS: tuple[str, ...] = ("world", "name")

# Location parts pydantic adds for the members of a union field (init_from: mapping or path).
_UNION_MEMBERS = frozenset({"InitFromSpec", "str"})
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_WORLD_RE = re.compile(r"\$\{world\.([A-Za-z_][A-Za-z0-9_]*)\}")


class SpecError(ConfigError):
    """An unusable spec; the message names file, dotted field path, value and what is allowed."""


# ---------------------------------------------------------------------------------- spec models
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SlurmSpec(_Strict):
    """SLURM parameters (submitit's SlurmExecutor); unset fields keep SLURM's defaults."""

    partition: Optional[str] = None
    gpus_per_node: Optional[int] = Field(None, ge=0)
    nodes: Optional[int] = Field(None, ge=1)
    tasks_per_node: Optional[int] = Field(None, ge=1)
    cpus_per_task: Optional[int] = Field(None, ge=1)
    mem: Optional[str] = Field(None, description="e.g. 64G (SLURM --mem).")
    time: Optional[Union[int, str]] = Field(None, description="Minutes, or [D-]HH:MM:SS; default: timeout_min.")
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    array_parallelism: Optional[int] = Field(None, ge=1)
    setup: list[str] = Field(default_factory=list, description="Shell lines run before the job (module load ...).")
    additional: dict[str, Union[str, int, float, bool]] = Field(
        default_factory=dict, description="Extra sbatch options, e.g. {reservation: x} -> #SBATCH --reservation=x."
    )

    def merged(self, other: Optional["SlurmSpec"]) -> "SlurmSpec":
        """``other``'s explicitly set fields win (``additional``/``setup`` are combined)."""
        if other is None:
            return self
        data = self.model_dump()
        for key in other.model_fields_set:
            value = getattr(other, key)
            if key == "additional":
                data[key] = {**data[key], **value}
            elif key == "setup":
                data[key] = list(data[key]) + [s for s in value if s not in data[key]]
            else:
                data[key] = value
        return SlurmSpec.model_validate(data)


class ResourceSpec(_Strict):
    """What a job may use: wall-clock limit (always set), requeues, SLURM parameters."""

    timeout_min: Optional[float] = Field(None, gt=0, description="Wall-clock limit per job attempt, minutes.")
    max_num_timeout: Optional[int] = Field(None, ge=0, description="Requeues allowed after timeouts.")
    signal_delay_s: Optional[int] = Field(None, ge=1, description="Checkpoint signal this long before the limit.")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)

    def merged(self, other: Optional["ResourceSpec"]) -> "ResourceSpec":
        if other is None:
            return self
        return ResourceSpec(
            timeout_min=other.timeout_min if other.timeout_min is not None else self.timeout_min,
            max_num_timeout=other.max_num_timeout if other.max_num_timeout is not None else self.max_num_timeout,
            signal_delay_s=other.signal_delay_s if other.signal_delay_s is not None else self.signal_delay_s,
            slurm=self.slurm.merged(other.slurm if "slurm" in other.model_fields_set else None),
        )


# Resource defaults per scale: a smoke job finishes in minutes; a full ViT-B/32 K400 job is
# checkpointed and requeued at each 24 h wall-clock limit, up to 6 times.
DEFAULT_RESOURCES: dict[str, ResourceSpec] = {
    "smoke": ResourceSpec(timeout_min=30, max_num_timeout=3),
    "full": ResourceSpec(timeout_min=24 * 60, max_num_timeout=6),
}


class CellSpec(_Strict):
    """A table cell a variant fills: ``metric`` is a key of the run's result.json."""

    table: str = Field(min_length=1)
    row: str = Field(min_length=1)
    column: str = Field(min_length=1)
    metric: str = Field(min_length=1, description="e.g. video_top1, attr_top1, fused_top1, mAP.")


class PaperCell(_Strict):
    """A cell with a published number and no run of ours (e.g. another method's row)."""

    table: str
    row: str
    column: str
    note: str = ""


class InitFromSpec(_Strict):
    """Start from another variant's run (its run directory), in this spec or another one."""

    variant: str
    spec: Optional[str] = Field(None, description="Path of another spec; default: this spec.")


class VariantSpec(_Strict):
    description: str = ""
    stage: Optional[Stage] = None
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides, e.g. model.interaction: mean.")
    scales: dict[ScaleName, dict[str, Any]] = Field(default_factory=dict)
    init_from: Union[InitFromSpec, str, None] = None
    cells: list[CellSpec] = Field(default_factory=list)
    run_at: list[ScaleName] = Field(default_factory=lambda: list(SCALES), description="Scales where it runs.")
    not_run_note: str = Field("", description="Why the variant does not run at the other scales.")
    resources: dict[ScaleName, ResourceSpec] = Field(default_factory=dict)


class Spec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    family: Family
    description: str = ""
    profile: Optional[Profile] = None
    seed: Optional[int] = None
    stage: Optional[Stage] = None
    dataset: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)
    fusion: dict[str, Any] = Field(default_factory=dict)
    loss: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    numerics: dict[str, Any] = Field(default_factory=dict)
    scales: dict[ScaleName, dict[str, Any]] = Field(default_factory=dict)
    resources: dict[ScaleName, ResourceSpec] = Field(default_factory=dict)
    variants: dict[str, VariantSpec] = Field(min_length=1)
    paper_only: list[PaperCell] = Field(default_factory=list)

    _path: Path = PrivateAttr(default=Path("<spec>"))
    _cli_overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def cli_overrides(self) -> dict[str, Any]:
        return dict(self._cli_overrides)

    def resources_for(self, variant: str, scale: str) -> ResourceSpec:
        """Default resources of the scale ← the spec's ← the variant's."""
        res = DEFAULT_RESOURCES[scale].merged(self.resources.get(scale))
        return res.merged(self.variants[variant].resources.get(scale))


# ---------------------------------------------------------------------------------- env expansion
def expand_env(value: Any, source: str | Path, where: str = "", env: Optional[Mapping[str, str]] = None) -> Any:
    """Expand ``${NAME}`` and ``${NAME:-default}`` in every string of ``value`` (recursively).

    ``${world.x}`` placeholders are left for resolution. An unset variable without a default is an
    error naming the file and the dotted field path.
    """
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: expand_env(v, source, f"{where}.{k}" if where else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, source, f"{where}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise SpecError(
            f"{source}: {where or '<root>'}: got {value!r}; environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})"
        )

    return _ENV_RE.sub(repl, value)


# ---------------------------------------------------------------------------------- dotted paths
def _canonical(path: str) -> Union[tuple[str, ...], str]:
    """The canonical field path of a dotted key, or a message saying why it names no field."""
    parts = tuple(str(path).split("."))
    if any(not p for p in parts):
        return f"got key {path!r}; expected a dotted field path like model.frames"
    if parts[0] == "data":
        parts = ("dataset",) + parts[1:]
    if len(parts) == 1:
        if parts[0] in TOP_LEVEL_FIELDS or parts[0] in SECTION_MODELS:
            return parts
        return (
            f"got key {path!r}; unknown field. Allowed: "
            f"{', '.join(sorted(TOP_LEVEL_FIELDS + tuple(SECTION_MODELS)))} or <section>.<field>"
        )
    if len(parts) != 2 or parts[0] not in SECTION_MODELS:
        return f"got key {path!r}; expected <section>.<field> with section one of {', '.join(sorted(SECTION_MODELS))}"
    section, name = parts
    if section == "dataset" and name == "dataset":
        name = "name"
    allowed = _section_fields(section)
    if name not in allowed:
        return f"got key {path!r}; unknown field {name!r} of {section}. Allowed: {', '.join(allowed)}"
    return (section, name)


def canonical_path(path: str, source: str | Path, where: str) -> tuple[str, ...]:
    """Normalise a dotted field path (``data.x`` → ``dataset.x``, ``dataset.dataset`` → ``dataset.name``)
    and check that it names a field. Returns ``(field,)`` or ``(section, field)``; raises SpecError."""
    result = _canonical(path)
    if isinstance(result, str):
        raise SpecError(f"{source}: {where}: {result}")
    return result


def _section_fields(section: str) -> list[str]:
    fields = list(SECTION_MODELS[section].model_fields)
    if section == "dataset":
        fields = [f for f in fields if f != "dataset"] + list(DATASET_EXTRA_FIELDS)
    return sorted(fields)


def flatten_overrides(
    overrides: Mapping[str, Any], source: str | Path, where: str, errors: Optional[list[str]] = None
) -> dict[tuple[str, ...], Any]:
    """Dotted overrides → ``{(section, field): value}``; a bare section with a mapping expands.

    Bad keys raise SpecError, or are appended to ``errors`` (as ``  where.key: message`` lines)
    when a list is given, so that one pass reports every mistake.
    """
    out: dict[tuple[str, ...], Any] = {}
    for key, value in overrides.items():
        at = f"{where}.{key}" if where else str(key)
        path = _canonical(str(key))
        problem = path if isinstance(path, str) else None
        if problem is None and len(path) == 1 and path[0] in SECTION_MODELS and not isinstance(value, dict):
            problem = f"got {value!r}; expected a mapping of {path[0]} fields (allowed: {', '.join(_section_fields(path[0]))})"
        if problem is not None:
            if errors is None:
                raise SpecError(f"{source}: {at}: {problem}")
            errors.append(f"  {at}: {problem}")
            continue
        if len(path) == 1 and path[0] in SECTION_MODELS:
            out.update(flatten_overrides({f"{path[0]}.{k}": v for k, v in value.items()}, source, where, errors))
        else:
            out[path] = value
    return out


def parse_overrides(items: Iterable[str], source: str = "command line") -> dict[str, Any]:
    """``["train.epochs=3", "model.pretrained=null"]`` → ``{"train.epochs": 3, ...}`` (values YAML-parsed)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"{source}: got {item!r}; expected key=value with a dotted key, e.g. train.epochs=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"{source}: {key}: got {raw!r}; not a YAML value ({exc})") from None
        canonical_path(key, source, key)
        out[key] = value
    return out


# ---------------------------------------------------------------------------------- validation helpers
def _is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and bool(_WORLD_RE.search(value))


def _format_pydantic(source: str | Path, exc: ValidationError, prefix: str, root: Optional[type[BaseModel]]) -> str:
    """format_validation_error, with unknown-field lines listing the allowed field names, required
    fields reported as missing, and the noise of union fields (``init_from``: mapping or path) removed."""
    text = format_validation_error(source, exc, prefix=prefix)
    if root is None:
        return text
    head, *lines = text.splitlines()
    out: list[str] = []
    for err, line in zip(exc.errors(), lines):
        loc_parts = [p for p in err["loc"] if p not in _UNION_MEMBERS]
        if len(loc_parts) != len(err["loc"]) and "str" in err["loc"] and isinstance(err.get("input"), dict):
            continue  # a mapping was given: the "path" member of the union is not what the user meant
        loc = ".".join(str(p) for p in loc_parts)
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if err["type"] == "missing":
            line = f"  {loc}: missing; this field is required"
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_fields_at(root, tuple(loc_parts[:-1]))
            if allowed:
                line = f"  {loc}: got {err.get('input')!r}; unknown field. Allowed: {', '.join(sorted(allowed))}"
        else:
            line = "  " + loc + ":" + line.split(":", 1)[1] if ":" in line else line
        out.append(line)
    head = head.split(" (")[0] + f" ({len(out)} error(s))"
    return "\n".join([head] + out)


def _allowed_fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the pydantic model reached by walking ``loc`` from ``model``."""
    current: Any = model
    parts = list(loc)
    while True:
        origin = typing.get_origin(current)
        if origin is Union or str(origin) == "types.UnionType":
            models = [a for a in typing.get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not models:
                return []
            current = models[0]
            continue
        if origin in (dict, Mapping) and parts:
            parts.pop(0)
            current = typing.get_args(current)[1]
            continue
        if origin in (list, Sequence) and parts:
            parts.pop(0)
            current = typing.get_args(current)[0]
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not parts:
                return list(current.model_fields)
            name = parts.pop(0)
            if name not in current.model_fields:
                return []
            current = current.model_fields[name].annotation
            continue
        return []


def _check_values(section: str, values: Mapping[str, Any], source: str | Path, where: str) -> list[str]:
    """Validate the given (non-placeholder) field values of one section; return error lines.

    Cross-field checks (errors without a field location) wait for the full resolution.
    """
    cls = SECTION_MODELS[section]
    data = {k: v for k, v in values.items() if not _is_placeholder(v) and k not in DATASET_EXTRA_FIELDS}
    if section == "dataset" and "name" in values and not _is_placeholder(values["name"]):
        data["dataset"] = values["name"]
    lines: list[str] = []
    if section == "dataset" and "world" in values:
        world = values["world"]
        if world not in (None, False, "auto") + WORLD_SPLITS:
            lines.append(
                f"  {where}.world: got {world!r}; expected one of {('auto',) + WORLD_SPLITS} or null"
            )
    try:
        cls.model_validate(data)
    except ValidationError as exc:
        text = format_validation_error(source, exc, prefix=where)
        for err, line in zip(exc.errors(), text.splitlines()[1:]):
            if err["loc"]:
                lines.append(line.replace(f"{where}.dataset:", f"{where}.name:"))
    return lines


def _check_top(name: str, value: Any, where: str) -> list[str]:
    allowed: dict[str, tuple[Any, ...]] = {"profile": ("official", "paper"), "stage": ("video", "attributes", "eval")}
    if name in allowed and value not in allowed[name]:
        return [f"  {where}: got {value!r}; expected one of {allowed[name]}"]
    if name == "seed" and (not isinstance(value, int) or isinstance(value, bool)):
        return [f"  {where}: got {value!r}; expected an integer"]
    if name == "init_from" and value is not None and not isinstance(value, str):
        return [f"  {where}: got {value!r}; expected a checkpoint path (variants use init_from: {{variant: X}})"]
    return []


def _check_dotted(flat: Mapping[tuple[str, ...], Any], source: str | Path, where: str) -> list[str]:
    by_section: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for path, value in flat.items():
        if len(path) == 1:
            lines += _check_top(path[0], value, f"{where}.{path[0]}" if where else path[0])
        else:
            by_section.setdefault(path[0], {})[path[1]] = value
    for section, values in by_section.items():
        lines += _check_values(section, values, source, f"{where}.{section}" if where else section)
    return lines


# ---------------------------------------------------------------------------------- loading
def load_spec(
    path: str | Path,
    overrides: Union[Sequence[str], Mapping[str, Any], None] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Spec:
    """Read, expand and validate a spec file; ``overrides`` are ``key=value`` strings or a dotted dict.

    Raises :class:`SpecError` naming the file, the dotted field path, the value and what is allowed.
    """
    path = Path(path)
    raw = read_yaml_file(path, SpecError, what="spec file")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: <root>: got {type(raw).__name__}; expected a mapping of spec fields")
    raw = expand_env(raw, path, env=env)
    spec = spec_from_dict(raw, source=path)
    spec._path = path.resolve()
    if overrides:
        cli = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
        lines: list[str] = []
        flat = flatten_overrides(cli, "command line", "", lines)
        lines += _check_dotted(flat, "command line", "")
        if lines:
            raise SpecError("\n".join([f"command line (for {path}): invalid override(s)"] + lines))
        spec._cli_overrides = cli
    return spec


def spec_from_dict(raw: Mapping[str, Any], source: str | Path = "<spec>") -> Spec:
    """Validate an already-parsed spec mapping (no env expansion); see :func:`load_spec`."""
    try:
        spec = Spec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecError(_format_pydantic(source, exc, "", Spec)) from None
    spec._path = Path(str(source))
    lines: list[str] = []
    for section in SECTION_MODELS:
        values: dict[str, Any] = getattr(spec, section)
        for key in values:
            if key not in _section_fields(section):
                lines.append(
                    f"  {section}.{key}: got {values[key]!r}; unknown field. Allowed: {', '.join(_section_fields(section))}"
                )
        known = {k: v for k, v in values.items() if k in _section_fields(section)}
        lines += _check_values(section, known, source, section)
    for scale, overrides in spec.scales.items():
        where = f"scales.{scale}"
        lines += _check_dotted(flatten_overrides(overrides, source, where, lines), source, where)
    for vname, variant in spec.variants.items():
        base = f"variants.{vname}"
        lines += _check_dotted(flatten_overrides(variant.set, source, f"{base}.set", lines), source, f"{base}.set")
        for scale, overrides in variant.scales.items():
            where = f"{base}.scales.{scale}"
            lines += _check_dotted(flatten_overrides(overrides, source, where, lines), source, where)
        if isinstance(variant.init_from, InitFromSpec) and variant.init_from.spec is None:
            if variant.init_from.variant not in spec.variants:
                lines.append(
                    f"  {base}.init_from.variant: got {variant.init_from.variant!r}; expected a variant of "
                    f"this spec: {', '.join(spec.variants)}"
                )
            elif variant.init_from.variant == vname:
                lines.append(f"  {base}.init_from.variant: got {vname!r}; a variant cannot start from itself")
    if lines:
        raise SpecError("\n".join([f"{source}: invalid spec ({len(lines)} error(s))"] + lines))
    return spec


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
    layers = [Layer(f"family defaults ({spec.family})", flatten_overrides(FAMILY_DEFAULTS[spec.family], src, "family"))]
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
