"""The pydantic models of an experiment spec (see :mod:`harness.spec`) and the tables of fields a spec
may set: :data:`SECTION_MODELS` (spec section -> RunConfig section model), :data:`TOP_LEVEL_FIELDS`,
the world splits, and the resources (:class:`ResourceSpec`, :class:`SlurmSpec`, per-scale defaults)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, PrivateAttr, field_validator

from bike.config import (
    MAX_SEED,
    StrictInputModel,
    AttributesConfig,
    DataConfig,
    EvalConfig,
    FusionConfig,
    LossConfig,
    ModelConfig,
    NumericsConfig,
    TrainConfig,
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


# ---------------------------------------------------------------------------------- names and text
#: Spec, variant and study names: they name directories, MLflow experiments and table rows.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1-64 characters: letters, digits, '_', '-', '.', starting with a letter or digit (no path components)"
#: A cell's metric: a key of the run's result.json metrics (``bike.engine.eval_loop``), optionally ``metrics.``-prefixed.
METRIC_RE = re.compile(
    r"(?:metrics\.)?(?:(?:video_|attr_|fused_)?(?:top1|top5|mean_class|mAP|mAP_official_running)"
    r"|zs_(?:half|full|k600)_(?:top1|top5|mean|std|top5_mean|top5_std|split\d+)|fusion_lambda)")
METRIC_RULE = ("[video_|attr_|fused_]top1|top5|mean_class|mAP, zs_{half,full,k600}_{top1,top5,mean,std,...} "
               "or fusion_lambda")
#: Longest string a spec field may hold (a path is at most 4096 bytes on Linux), and free text.
MAX_FIELD_CHARS = 4096
MAX_FREE_TEXT_CHARS = 65536
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_FREE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def name_problem(value: Any) -> Optional[str]:
    """Why ``value`` cannot be a spec/variant/study name, or None."""
    if isinstance(value, str) and NAME_RE.fullmatch(value):
        return None
    return f"expected a name of {NAME_RULE}"


def text_problem(value: str, free: bool = False) -> Optional[str]:
    """Why ``value`` cannot be a field's text (a control character, too long), or None."""
    limit = MAX_FREE_TEXT_CHARS if free else MAX_FIELD_CHARS
    if len(value) > limit:
        return f"{len(value)} characters; expected at most {limit}"
    bad = (_FREE_CONTROL_RE if free else _CONTROL_RE).search(value)
    if bad:
        return (f"control character {bad.group()!r} at position {bad.start()}; expected printable text (a newline "
                "or control character would reach a shell line, an sbatch script or a table)")
    return None


def parse_slurm_time(value: Union[int, str]) -> int:
    """SLURM time (minutes, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) → whole minutes (rounded up).
    Raises ValueError naming the value and the forms allowed."""
    rule = f"SLURM time {value!r}: expected minutes >= 1, MM:SS, HH:MM:SS or D-HH[:MM[:SS]]"
    if isinstance(value, bool):
        raise ValueError(rule)
    if isinstance(value, int):
        if value < 1:
            raise ValueError(rule)
        return value
    text = str(value).strip()
    if not re.fullmatch(r"(?:\d{1,5}-)?\d{1,6}(?::\d{1,2}){0,2}", text):
        raise ValueError(rule)
    if text.isdigit():
        minutes = int(text)
    else:
        days = 0
        if "-" in text:
            d, text = text.split("-", 1)
            days = int(d)
        parts = [int(p) for p in text.split(":")]
        if days:
            parts += [0] * (3 - len(parts))
            h, m, s = parts
        elif len(parts) == 3:
            h, m, s = parts
        else:
            h, m, s = 0, parts[0], parts[1]
        minutes = days * 24 * 60 + h * 60 + m + math.ceil(s / 60)
    if minutes < 1:
        raise ValueError(rule)
    return minutes


# ---------------------------------------------------------------------------------- spec models
class _Strict(StrictInputModel):
    """Spec models: no unknown fields, no bool for a number, finite floats (``bike.config.StrictInputModel``)."""


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

    @field_validator("partition", "account", "qos", "constraint", "exclude", "mem")
    @classmethod
    def _one_token(cls, value: Optional[str]) -> Optional[str]:
        """Values written into ``#SBATCH`` lines: printable, without spaces."""
        if value is None:
            return value
        why = text_problem(value) or (None if value.strip() and not re.search(r"\s", value) else
                                      "expected a non-empty value without whitespace")
        if why:
            raise ValueError(why)
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"\d+[KMGTkmgt]?", value):
            raise ValueError("expected SLURM memory like 64G, 16000M or 4096 (a number with K, M, G or T)")
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: Optional[Union[int, str]]) -> Optional[Union[int, str]]:
        if value is not None:
            parse_slurm_time(value)
        return value

    @field_validator("setup")
    @classmethod
    def _setup_lines(cls, value: list[str]) -> list[str]:
        for i, line in enumerate(value):
            why = text_problem(line)
            if why:
                raise ValueError(f"line {i}: {why} (one shell line per list entry)")
        return value

    @field_validator("additional")
    @classmethod
    def _additional(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", str(key)):
                raise ValueError(f"option {key!r}: expected an sbatch option name (letters, digits, '_', '-')")
            why = text_problem(str(item))
            if why:
                raise ValueError(f"option {key!r}: {why}")
        return value

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

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if not METRIC_RE.fullmatch(value):
            raise ValueError(f"not a metric a run reports; expected one of {METRIC_RULE}")
        return value


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
    source_url: str = Field("", description=(
        "Where the released file that init_from names can be downloaded (the model zoo): while the file is "
        "missing the variant is not run and its cells say where to get it, instead of failing the plan."))
    cells: list[CellSpec] = Field(default_factory=list)
    run_at: list[ScaleName] = Field(default_factory=lambda: list(SCALES), description="Scales where it runs.")
    not_run_note: str = Field("", description="Why the variant does not run at the other scales.")
    resources: dict[ScaleName, ResourceSpec] = Field(default_factory=dict)


class Spec(_Strict):
    name: str
    family: Family
    description: str = ""
    profile: Optional[Profile] = None
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
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

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        why = name_problem(value)
        if why:
            raise ValueError(why)
        return value

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            why = name_problem(key)
            if why:
                raise ValueError(f"variant {str(key)[:80]!r}: {why}")
        return value

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
