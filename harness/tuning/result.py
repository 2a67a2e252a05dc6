"""The outcome of a study: :class:`StudyResult` and :func:`summarise_study` (the best params and
value, and the exact λ interval for them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.tuning.problem import FusionProblem
from harness.tuning.spec import IntRange, SweepSpec


@dataclass
class StudyResult:
    """The outcome of :func:`run_study`.

    Attributes:
        best_params: the best trial's params, plus ``lam`` when λ was solved exactly.
        best_value: its objective value (a fraction).
        best_lambda: the λ to use; lam_interval: the exact optimum interval for the best params.
        n_complete: complete trials in the study (all workers, all sessions).
        trial_seconds: wall time of the optimisation loop of this call (excludes logging).
    """

    study: str
    best_params: dict
    best_value: float
    best_lambda: float
    lam_interval: tuple[float, float]
    n_complete: int
    study_dir: Path
    storage: str
    objective: str
    tune_on: str
    split: str
    trial_seconds: float = 0.0
    mlflow_run_id: Optional[str] = None
    extras: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "study": self.study,
            "objective": self.objective,
            "best_value": self.best_value,
            "best_params": self.best_params,
            "best_lambda": self.best_lambda,
            "lam_interval": list(self.lam_interval),
            "n_complete": self.n_complete,
            "tune_on": self.tune_on,
            "split": self.split,
            "tuned_on_reported_split": self.tune_on == "reported",
            "storage": self.storage,
            "mlflow_run_id": self.mlflow_run_id,
            "trial_loop_seconds": self.trial_seconds,
            **self.extras,
        }


def summarise_study(
    spec: SweepSpec, study: Any, problem: FusionProblem, study_dir: Path, storage: str, trial_seconds: float, source_run: str
) -> StudyResult:
    """Best params/value and the exact λ interval for them."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {spec.study}: no complete trial")
    best = study.best_trial
    params = dict(best.params)
    k = params.get("k", spec.space.k if not isinstance(spec.space.k, IntRange) else None)
    transform = params.get("transform", spec.space.transform if isinstance(spec.space.transform, str) else None)
    curve = problem.curve(k, transform)
    lo, hi, exact_value = curve.best()
    extras: dict[str, Any] = {
        "source_run": str(Path(source_run).resolve()),
        "transform": transform or problem.default_transform,
        "classes": list(problem.cache.classes),
        **problem.diagnostics,
    }
    if spec.space.exact_lambda:
        best_lambda = float(best.user_attrs.get("lam", 0.5 * (lo + hi)))
        params["lam"] = best_lambda
    else:
        best_lambda = float(params.get("lam", spec.space.lam))  # type: ignore[arg-type]
        extras["exact_best_lambda"] = 0.5 * (lo + hi)
        extras["exact_best_value"] = exact_value
    if k is not None:
        params["k"] = k
    return StudyResult(
        study=spec.study,
        best_params=params,
        best_value=float(best.value),
        best_lambda=best_lambda,
        lam_interval=(lo, hi),
        n_complete=len(complete),
        study_dir=study_dir,
        storage=storage,
        objective=spec.objective,
        tune_on=spec.tune_on,
        split=problem.cache.split,
        trial_seconds=trial_seconds,
        extras=extras,
    )
