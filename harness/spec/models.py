"""The pydantic models of an experiment spec (see :mod:`harness.spec`) and the tables of fields a spec
may set: :data:`SECTION_MODELS` (spec section -> RunConfig section model), :data:`TOP_LEVEL_FIELDS`,
the world splits, and the resources (:class:`ResourceSpec`, :class:`SlurmSpec`, per-scale defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from bike.config import (
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
