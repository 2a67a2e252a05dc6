"""The sweep spec (``sweeps/*.yaml``): pydantic models of a study and its search space, and
:func:`load_sweep_spec` (YAML, ``dotted.key=value`` overrides, errors naming file, field and value)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bike.config import MAX_SEED, ConfigError, RunConfig, StrictInputModel, short_repr
from harness.spec import ResourceSpec
from harness.spec.load import read_strict_yaml
from harness.spec.models import name_problem, text_problem

ObjectiveName = Literal["fused_top1", "fused_mean_class"]
TransformName = Literal["softmax", "cosine"]
ExecutorName = Literal["local", "slurm", "debug"]
#: Wall-clock limit of one study worker task when the sweep's ``resources.timeout_min`` is unset.
DEFAULT_WORKER_TIMEOUT_MIN = 60.0
#: objective -> metric of :func:`harness.lambda_exact.exact_lambda_curve`.
OBJECTIVE_METRIC = {"fused_top1": "top1", "fused_mean_class": "mean_class"}


# ==================================================================================== sweep spec
class _Strict(StrictInputModel):
    """Sweep models: frozen ``bike.config.StrictInputModel``s whose texts are checked too."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            why = text_problem(value, free=info.field_name == "description")
            if why:
                raise ValueError(why)
        return value


class FloatRange(_Strict):
    """A sampled float: ``low..high``; ``step`` or ``grid`` make it discrete (needed by ``sampler: grid``)."""

    low: float = Field(0.0, ge=0.0, le=1.0)
    high: float = Field(1.0, ge=0.0, le=1.0)
    step: Optional[float] = Field(None, gt=0.0)
    grid: Optional[list[float]] = None

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.low > self.high:
            raise ValueError(f"low={self.low} exceeds high={self.high}")
        if self.grid is not None and not all(0.0 <= g <= 1.0 for g in self.grid):
            raise ValueError("grid values must lie in [0, 1]")
        return self

    def values(self) -> Optional[list[float]]:
        """The discrete values, or None for a continuous range."""
        if self.grid is not None:
            return sorted(set(self.grid))
        if self.step is not None:
            n = int(np.floor((self.high - self.low) / self.step + 1e-9))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        return None


class IntRange(_Strict):
    """A sampled int ``low..high``; ``high: null`` = the number of attributes cached."""

    low: int = Field(1, ge=1)
    high: Optional[int] = Field(None, ge=1)
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.high is not None and self.low > self.high:
            raise ValueError(f"low={self.low} exceeds high={self.high}")
        return self


class SearchSpace(_Strict):
    """What a trial chooses. More dimensions can be added here as fields.

    * ``lam``: ``exact`` (default: solved inside each trial, never sampled), a fixed float, or a
      :class:`FloatRange` to sample.
    * ``k``: an :class:`IntRange` (default 1..number cached), a fixed int, or null (use the cached
      ``attr_scores.npy`` as they are; no re-encoding).
    * ``transform``: null (the source run's ``fusion.transform``), one name, or a list to choose from.
    """

    lam: Union[Literal["exact"], float, FloatRange] = "exact"
    k: Union[None, int, IntRange] = IntRange()
    transform: Union[None, TransformName, list[TransformName]] = None

    @field_validator("lam")
    @classmethod
    def _lam_in_unit(cls, v: Any) -> Any:
        if isinstance(v, float) and not 0.0 <= v <= 1.0:
            raise ValueError("a fixed λ must lie in [0, 1]; or 'exact', or {low, high[, step|grid]}")
        return v

    @field_validator("k")
    @classmethod
    def _k_positive(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("a fixed k must be >= 1; or {low, high} or null")
        return v

    @field_validator("transform")
    @classmethod
    def _transform_nonempty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list; give at least one of 'softmax', 'cosine'")
        return v

    @property
    def exact_lambda(self) -> bool:
        return self.lam == "exact"

    @property
    def searched(self) -> list[str]:
        """The parameters a trial samples."""
        out = ["k"] if isinstance(self.k, IntRange) else []
        out += ["transform"] if isinstance(self.transform, list) else []
        return out + (["lam"] if isinstance(self.lam, FloatRange) else [])


class SourceRef(_Strict):
    """A source run named by experiment spec and variant, for the harness to resolve to a run dir."""

    spec: str = Field(..., description="Experiment spec file, e.g. experiments/table6.yaml.")
    variant: str = Field(..., description="Variant (table cell) inside it, e.g. general.")
    scale: Optional[str] = Field(None, description="Scale the spec is expanded at (e.g. smoke); null: the spec's default.")


class SweepSpec(_Strict):
    """An Optuna study on cached scores (``sweeps/*.yaml``)."""

    study: str = Field(..., min_length=1, description="Optuna study name (also the study directory).")
    description: str = Field("", max_length=65536)
    source_run: Optional[str] = Field(None, description="Run directory holding the caches.")
    source: Optional[SourceRef] = Field(None, description="Or: the spec + variant whose run the harness resolves.")
    attr_run: Optional[str] = Field(None, description="Optional run whose attribute caches are joined by video id.")
    tune_on: Literal["holdout", "reported"] = "holdout"
    split: Optional[Literal["tune", "val", "test"]] = Field(
        None, description="Cached split to tune on; null: 'tune' (holdout) or the source run's eval.split (reported)."
    )
    objective: ObjectiveName = "fused_top1"
    sampler: Literal["tpe", "grid"] = "tpe"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    n_trials: int = Field(50, ge=1, description="Trials per worker.")
    workers: int = Field(1, ge=1, description="Workers sharing the study: one submitit job array of this many tasks.")
    executor: Optional[ExecutorName] = Field(
        None,
        description="Where the workers run: submitit 'local' (default), 'slurm' or 'debug'. One worker runs in "
        "this process unless 'slurm' is named.",
    )
    resources: ResourceSpec = Field(
        default_factory=lambda: ResourceSpec(timeout_min=DEFAULT_WORKER_TIMEOUT_MIN),
        description="Per worker task: timeout_min (wall-clock limit) and slurm.{partition, time, cpus_per_task, mem, "
        "account, qos, array_parallelism, ...} (harness.spec.ResourceSpec).",
    )
    timeout_s: Optional[float] = Field(None, gt=0)
    storage: Optional[str] = Field(
        None,
        description="null: sqlite under the study directory (journal file with executor 'slurm'); "
        "'journal:<path>'; any database URL.",
    )
    results_dir: str = "results"
    experiment: Optional[str] = Field(None, description="MLflow experiment (default: bikebench-tune).")
    space: SearchSpace = SearchSpace()

    @field_validator("resources", mode="after")
    @classmethod
    def _resources_with_limit(cls, v: ResourceSpec) -> ResourceSpec:
        """A worker task always has a wall-clock limit: ``timeout_min`` defaults to DEFAULT_WORKER_TIMEOUT_MIN."""
        return ResourceSpec(timeout_min=DEFAULT_WORKER_TIMEOUT_MIN).merged(v)

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        if self.source_run is None and self.source is None:
            raise ValueError("give source_run (a run directory) or source (spec + variant)")
        if name_problem(self.study):
            raise ValueError(f"study={short_repr(self.study, 80)}: {name_problem(self.study)}; it names a directory")
        if self.sampler == "grid" and isinstance(self.space.lam, FloatRange) and self.space.lam.values() is None:
            raise ValueError("sampler 'grid' needs space.lam to be 'exact', a number, or a range with step or grid")
        if self.tune_on == "holdout" and self.split not in (None, "tune"):
            raise ValueError(
                f"split={self.split!r} is a reported split but tune_on is 'holdout'; use split: tune, or set tune_on: reported"
            )
        return self

    def split_for(self, config: RunConfig) -> str:
        """The cached split to read: ``split``, else ``tune`` (holdout) or ``config.eval.split`` (reported)."""
        if self.split is not None:
            return self.split
        return "tune" if self.tune_on == "holdout" else config.eval.split

    @property
    def metric(self) -> str:
        return OBJECTIVE_METRIC[self.objective]

    def study_dir(self) -> Path:
        return Path(self.results_dir) / "studies" / self.study


class SweepSpecError(ConfigError):
    """A sweep spec that cannot be used; the message names file, field, value and what is allowed."""


def _format_errors(source: str | Path, exc: ValidationError) -> str:
    """``file: invalid sweep spec`` + one ``field.path: got X; message`` line per error."""
    lines = [f"{source}: invalid sweep spec ({exc.error_count()} error(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("literal[", "float", "int", "list[", "FloatRange", "IntRange", "function-")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field (allowed: {', '.join(_allowed_fields(err['loc']))})"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"expected one of {err['ctx']['expected']}"
        lines.append(f"  {loc or '<root>'}: got {short_repr(err.get('input'))}; {msg}")
    return "\n".join(dict.fromkeys(lines))


def _allowed_fields(loc: Sequence[Any]) -> list[str]:
    """The field names of the model that holds the unknown key at ``loc`` (SweepSpec, SearchSpace,
    ResourceSpec, SlurmSpec, ...), for the error message."""
    model: Any = SweepSpec
    for part in list(loc)[:-1]:
        info = getattr(model, "model_fields", {}).get(str(part))
        if info is None:
            break
        candidates = [info.annotation, *typing.get_args(info.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return sorted(getattr(model, "model_fields", {}))


def _set_dotted(raw: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = raw
    for i, key in enumerate(keys[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise SweepSpecError(f"{source}: override {short_repr(dotted)}: {'.'.join(keys[: i + 1])} is {short_repr(nxt)}, "
                                 "not a mapping")
        node = nxt
    node[keys[-1]] = value


def load_sweep_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read a sweep YAML, apply ``dotted.key=value`` overrides (values parsed as YAML), validate.

    Errors name the file and the dotted field path.
    """
    path = Path(path)
    raw = read_strict_yaml(path, SweepSpecError, what="sweep spec file") or {}
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not k for k in key.strip().split(".")):
            raise SweepSpecError(f"command line (for {path}): override {short_repr(item)}: expected key=value with a "
                                 "dotted key, e.g. n_trials=20")
        why = text_problem(item)
        if why:
            raise SweepSpecError(f"command line (for {path}): override {short_repr(item)}: {why}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SweepSpecError(f"command line (for {path}): {key.strip()}: got {short_repr(value)}; not a YAML value "
                                 f"({short_repr(str(exc), 300)})") from None
        _set_dotted(raw, key.strip(), parsed, str(path))
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SweepSpecError(_format_errors(path, exc)) from None
