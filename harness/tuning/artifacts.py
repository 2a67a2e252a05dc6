"""A study's files: ``best.json``, the exact λ curve, Optuna's plots and, with λ solved exactly,
the exact objective over k × λ (:func:`exact_surface`). ``matplotlib`` is imported only inside the
functions that need it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bike.rundir import atomic_write_text
from harness.tuning.problem import FusionProblem
from harness.tuning.result import StudyResult
from harness.tuning.spec import SweepSpec


def write_artifacts(spec: SweepSpec, study: Any, problem: FusionProblem, result: StudyResult, study_dir: Path) -> dict[str, Path]:
    """``best.json``, the λ curve (PNG + JSON) and Optuna's matplotlib plots as PNGs.

    A plot that cannot be made (too few trials, a single parameter, a missing optional package) is
    skipped and its reason recorded in ``plots.json``.
    """
    out: dict[str, Path] = {}
    best_path = study_dir / "best.json"
    atomic_write_text(best_path, json.dumps(result.to_json(), indent=2))  # a reader never sees half a file
    out["best.json"] = best_path
    k = result.best_params.get("k")
    transform = result.extras.get("transform")
    curve = problem.curve(k if isinstance(k, int) else None, transform)
    out["lambda_curve.png"] = curve.plot(
        study_dir / "lambda_curve.png",
        title=f"{spec.study}: exact {curve.metric} vs λ (k={k}, {curve.transform}, {result.split} split)",
        mark=None if spec.space.exact_lambda else result.best_lambda,
    )
    curve_json = study_dir / "lambda_curve.json"
    curve_json.write_text(json.dumps(curve.to_dict()))
    out["lambda_curve.json"] = curve_json
    out.update(_optuna_plots(study, study_dir))
    if spec.space.exact_lambda:
        out.update(_exact_surface(spec, study, problem, result, study_dir))
    return out


#: λ samples of the exact k × λ surface (the curves are exact step functions; this is only the raster).
SURFACE_LAMBDAS = 401


def exact_surface(problem: FusionProblem, ks: Sequence[int], transform: Optional[str], n_lam: int = SURFACE_LAMBDAS) -> dict[str, Any]:
    """The objective on a ``[len(ks), n_lam]`` grid of (k, λ), read off each k's exact λ curve.

    Returns ``{"k": [...], "lam": [...], "values": [[...]] (fractions), "metric", "transform"}``.
    """
    lams = np.linspace(0.0, 1.0, n_lam)
    rows = [problem.curve(int(k), transform).at(lams) for k in ks]
    return {"k": [int(k) for k in ks], "lam": lams.tolist(), "values": [np.asarray(r, dtype=float).tolist() for r in rows],
            "metric": problem.metric, "transform": problem._transform(transform)}


def _exact_surface(spec: SweepSpec, study: Any, problem: FusionProblem, result: StudyResult, study_dir: Path) -> dict[str, Path]:
    """With λ solved exactly Optuna sees one parameter (k), so its contour and importance plots have
    nothing to show; this writes the exact objective over k × λ instead (``exact_k_lambda.{json,png}``)."""
    import optuna

    ks = sorted({t.params["k"] for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                 if isinstance(t.params.get("k"), int)})
    report_path = study_dir / "plots.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if len(ks) < 2:
        report["exact_k_lambda"] = f"skipped: needs >= 2 values of k tried (have {ks})"
        report_path.write_text(json.dumps(report, indent=2))
        return {}
    surface = exact_surface(problem, ks, result.extras.get("transform"))
    out: dict[str, Path] = {}
    data_path = study_dir / "exact_k_lambda.json"
    data_path.write_text(json.dumps(surface))
    out["exact_k_lambda.json"] = data_path
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 0.9 + 0.28 * len(ks)), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        values = 100.0 * np.asarray(surface["values"])
        lams = np.asarray(surface["lam"])
        edges_l = np.concatenate([[0.0], 0.5 * (lams[1:] + lams[:-1]), [1.0]])
        edges_k = np.arange(len(ks) + 1) - 0.5
        mesh = ax.pcolormesh(edges_l, edges_k, values, shading="flat", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label=f"{surface['metric']} (%)")
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        best_k = result.best_params.get("k")
        if best_k in ks:
            lo, hi = result.lam_interval
            ax.plot([lo, hi], [ks.index(best_k)] * 2, color="red", linewidth=3, label=f"best: k={best_k}, λ∈[{lo:.3f}, {hi:.3f}]")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_xlabel("λ (weight of the video branch)")
        ax.set_ylabel("k (attributes)")
        ax.set_title(f"{spec.study}: exact {surface['metric']} over k × λ ({surface['transform']})", fontsize=9)
        fig.tight_layout()
        png = study_dir / "exact_k_lambda.png"
        fig.savefig(png)
        out["exact_k_lambda.png"] = png
        report["exact_k_lambda"] = "ok"
    except Exception as exc:  # a plot never fails the study
        report["exact_k_lambda"] = f"failed: {type(exc).__name__}: {exc}"
    for name in ("contour", "param_importances"):
        if str(report.get(name, "")).startswith("skipped"):
            report[name] += "; λ is solved exactly inside each trial: see exact_k_lambda.png (the exact objective over k × λ)"
    report_path.write_text(json.dumps(report, indent=2))
    return out


def _optuna_plots(study: Any, study_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = sorted({p for t in complete for p in t.params})
    varying = [p for p in names if len({repr(t.params.get(p)) for t in complete}) > 1]
    report: dict[str, str] = {}
    out: dict[str, Path] = {}

    def save(name: str, make: Callable[[], Any], reason_missing: Optional[str]) -> None:
        if reason_missing:
            report[name] = f"skipped: {reason_missing}"
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
            path = study_dir / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            out[f"{name}.png"] = path
            report[name] = "ok"
        except Exception as exc:  # a plot never fails the study
            report[name] = f"failed: {type(exc).__name__}: {exc}"
            plt.close("all")

    save("optimization_history", lambda: ovm.plot_optimization_history(study), None)
    few = None if len(varying) >= 2 else f"needs >= 2 varying parameters (have {varying})"
    enough = few or (None if len(complete) >= 4 else f"needs >= 4 complete trials (have {len(complete)})")

    def importance() -> Any:
        # PED-ANOVA: Optuna's own evaluator, no scikit-learn (fANOVA's forest) needed.
        return ovm.plot_param_importances(study, params=varying, evaluator=optuna.importance.PedAnovaImportanceEvaluator())

    save("param_importances", importance, enough)
    save("contour", lambda: ovm.plot_contour(study, params=varying[:2]), few)
    plots = study_dir / "plots.json"
    plots.write_text(json.dumps(report, indent=2))
    out["plots.json"] = plots
    return out
