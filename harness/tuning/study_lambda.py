"""A finished study's λ, used elsewhere: :func:`load_study_lambda` reads and checks its
``best.json`` (:class:`StudyLambda`), :func:`fused_metric` recomputes a fused metric of any run's
cached split at that λ (``bikebench table6 --lambda-from STUDY``, :mod:`harness.table6`)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bike.config import ConfigError
from bike.engine.caches import MANIFEST, ScoreCache, split_cache_dir
from harness.tuning.problem import FusionProblem


# ================================================================== a finished study's λ, elsewhere
BEST_FILE = "best.json"


class StudyLambdaError(ConfigError):
    """A study's ``best.json`` that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class StudyLambda:
    """The λ a finished study chose, read from its ``best.json`` (see :func:`read_study_lambda`).

    Attributes:
        path: the ``best.json`` read.
        study: the study name.
        best_lambda: the λ to use; lam_interval: the exact optimum interval of the best params.
        best_params: the best trial's params (``k``, ``lam``, ``transform`` when searched).
        split: the cached split the study tuned on; tune_on: ``holdout`` or ``reported``.
        objective: ``fused_top1`` / ``fused_mean_class``; transform: the score transform λ was tuned for.
        source_run: the run whose caches the study read (absolute path, when recorded).
        classes: the class names of the study's scores, in column order.
    """

    path: Path
    study: str
    best_lambda: float
    lam_interval: tuple[float, float]
    best_params: dict
    split: str
    tune_on: str
    objective: str
    transform: Optional[str]
    source_run: Optional[str]
    classes: list[str]

    @property
    def tuned_on_reported_split(self) -> bool:
        """The study chose λ on the split that is reported (``tune_on: reported``)."""
        return self.tune_on == "reported"


def resolve_study_best(ref: str | Path, results_dir: str | Path = "results") -> Path:
    """``ref`` → a ``best.json`` path: a ``best.json`` file, a study directory holding one, or a study
    name looked up as ``<results_dir>/studies/<ref>/best.json``. Raises :class:`StudyLambdaError`
    listing the places tried (and the studies that exist) when none has a ``best.json``."""
    given = Path(ref)
    studies = Path(results_dir) / "studies"
    tried = [given] if given.suffix == ".json" else [given / BEST_FILE]
    if re.fullmatch(r"[A-Za-z0-9_.\-]+", str(ref)):
        tried.append(studies / str(ref) / BEST_FILE)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    known = sorted(d.name for d in studies.iterdir() if (d / BEST_FILE).is_file()) if studies.is_dir() else []
    raise StudyLambdaError(
        f"study {str(ref)!r}: no {BEST_FILE} at {' or '.join(str(t) for t in tried)}; expected a best.json, a study "
        f"directory or a study name under {studies} (studies with a best.json there: {known or 'none'}); "
        "run `bikebench tune SWEEP` first"
    )


def _study_classes(raw: dict, path: Path) -> list[str]:
    """``classes`` of best.json, else the class list of the source run's cache of the study's split."""
    classes = raw.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    if classes is not None:
        raise StudyLambdaError(f"{path}: field 'classes': expected a non-empty list of class names, got {classes!r}")
    source, split = raw.get("source_run"), raw.get("split")
    manifest = split_cache_dir(str(source), str(split)) / MANIFEST if source and split else None
    if manifest is None or not manifest.is_file():
        raise StudyLambdaError(
            f"{path}: no field 'classes' (a study from before it was recorded), and the source run's cache "
            f"{manifest or '<source_run>/cache/<split>/manifest.json'} is not readable: the study's classes cannot be "
            "checked against the table's runs; re-run `bikebench tune` to rewrite best.json"
        )
    try:
        listed = json.loads(manifest.read_text()).get("classes")
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyLambdaError(f"{path}: the source run's {manifest} is unreadable ({exc}); cannot check the study's classes") from None
    if not isinstance(listed, list) or not listed:
        raise StudyLambdaError(f"{manifest}: field 'classes' missing or empty; cannot check the study's classes")
    return [str(c) for c in listed]


def read_study_lambda(path: str | Path) -> StudyLambda:
    """Read and check a study's ``best.json`` (written by :func:`run_study`).

    Required fields: ``study`` (str), ``best_lambda`` (in [0, 1]), ``lam_interval`` ([lo, hi]),
    ``split`` (str), ``tune_on`` (``holdout``/``reported``); ``classes`` (else read from the source
    run's cache manifest). Every error names the file and the field.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise StudyLambdaError(f"{path}: file not found; run `bikebench tune SWEEP` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyLambdaError(f"{path}: not a readable JSON file ({exc}); re-run `bikebench tune` to rewrite it") from None
    if not isinstance(raw, dict):
        raise StudyLambdaError(f"{path}: expected a JSON object, got {type(raw).__name__}")

    def need(key: str, kind: Any, what: str) -> Any:
        value = raw.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise StudyLambdaError(f"{path}: field {key!r}: expected {what}, got {value!r}")
        return value

    lam = float(need("best_lambda", (int, float), "a number in [0, 1]"))
    if not 0.0 <= lam <= 1.0:
        raise StudyLambdaError(f"{path}: field 'best_lambda': expected a number in [0, 1], got {lam}")
    interval = need("lam_interval", list, "[lo, hi]")
    if (len(interval) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in interval)
            or not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in interval) or interval[0] > interval[1]):
        raise StudyLambdaError(f"{path}: field 'lam_interval': expected [lo, hi] with 0 <= lo <= hi <= 1, got {interval!r}")
    tune_on = need("tune_on", str, "'holdout' or 'reported'")
    if tune_on not in ("holdout", "reported"):
        raise StudyLambdaError(f"{path}: field 'tune_on': expected 'holdout' or 'reported', got {tune_on!r}")
    params = raw.get("best_params", {})
    if not isinstance(params, dict):
        raise StudyLambdaError(f"{path}: field 'best_params': expected an object of parameter values, got {params!r}")
    return StudyLambda(
        path=path,
        study=need("study", str, "the study name"),
        best_lambda=lam,
        lam_interval=(float(interval[0]), float(interval[1])),
        best_params=dict(params) if isinstance(params, dict) else {},
        split=need("split", str, "the split the study tuned on"),
        tune_on=tune_on,
        objective=str(raw.get("objective", "fused_top1")),
        transform=str(raw["transform"]) if raw.get("transform") else None,
        source_run=str(raw["source_run"]) if raw.get("source_run") else None,
        classes=_study_classes(raw, path),
    )


def load_study_lambda(ref: str | Path, results_dir: str | Path = "results") -> StudyLambda:
    """:func:`resolve_study_best` then :func:`read_study_lambda`; a study named by ``ref`` must be the
    study its ``best.json`` says (a copied or renamed directory is refused)."""
    path = resolve_study_best(ref, results_dir)
    study = read_study_lambda(path)
    by_name = path.parent.parent == Path(results_dir) / "studies" and path.parent.name == str(ref)
    if by_name and study.study != str(ref):
        raise StudyLambdaError(f"{path}: field 'study': expected {str(ref)!r} (the study asked for), got {study.study!r}")
    return study


#: Metrics :func:`fused_metric` computes (bike.metrics, in percent like result.json).
FUSED_METRICS = ("top1", "top5", "mean_class")


def fused_metric(cache: ScoreCache, lam: float, metric: str = "top1", transform: Optional[str] = None) -> float:
    """A metric (percent, as evaluation reports it) of ``λ·T(S_V) + (1 − λ)·T(S_A)`` on one cached split.

    ``T`` is ``transform`` (default: the run's ``fusion.transform``); the fusion is evaluation's
    (``bike.fusion``, through :meth:`FusionProblem.fused`: view-averaged probabilities are the softmax
    side). Unlabelled rows are skipped. No network runs: only the cached ``video_scores`` and
    ``attr_scores`` are read.
    """
    from bike.fusion import check_lambda
    from bike.metrics import mean_class_accuracy, topk_accuracy

    if metric not in FUSED_METRICS:
        raise ValueError(f"fused_metric: metric={metric!r}; expected one of {FUSED_METRICS}")
    check_lambda(lam)
    problem = FusionProblem(cache, default_transform=transform or cache.config.fusion.transform)
    fused = problem.fused(lam)
    if metric == "mean_class":
        return float(mean_class_accuracy(fused, problem.labels))
    return float(topk_accuracy(fused, problem.labels, ks=(int(metric[3:]),))[metric])
