"""The entry point of ``bikebench tune``: :func:`tune_main` (load the spec, resolve the source run,
run the study, print the best) and :func:`resolve_source_run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from bike.config import ConfigError
from bike.engine.caches import CacheError
from harness.spec import ResourceSpec
from harness.tuning.problem import ProblemFactory
from harness.tuning.sentences import TextSideFactory
from harness.tuning.spec import SourceRef, SweepSpec, SweepSpecError, load_sweep_spec
from harness.tuning.study import run_study
from harness.tuning.workers import DEFAULT_WORKER_POLL_S, StudyWorkerError


# ===================================================================================== entry point
SourceResolver = Callable[[SourceRef], Path]


def resolve_source_run(spec: SweepSpec, resolver: Optional[SourceResolver] = None) -> Path:
    """``source_run`` as given, else ``source`` (spec + variant) through the harness's resolver.

    The resolver defaults to ``harness.expand.resolve_source_run(ref, results=spec.results_dir)``: the
    run directory of that variant at ``ref.scale`` (its training run also caches the ``tune`` split
    when ``data.tuning_holdout > 0``).
    """
    if spec.source_run:
        run = Path(spec.source_run)
        if not run.is_dir():
            raise CacheError(f"source_run: {run} is not a directory")
        return run
    assert spec.source is not None
    if resolver is None:
        try:
            from harness.expand import resolve_source_run as expand_resolver
        except ImportError:
            raise SweepSpecError(
                f"source: {spec.source.spec} / {spec.source.variant}: no resolver from spec + variant to a run directory "
                "(harness.expand.resolve_source_run); give source_run: <run dir> instead"
            ) from None
        results_dir = spec.results_dir
        resolver = lambda ref: expand_resolver(ref, results=results_dir)  # noqa: E731
    return Path(resolver(spec.source))


def tune_main(
    spec_path: str | Path,
    overrides: Sequence[str] = (),
    tracking_uri: Optional[str] = None,
    *,
    text_side: Optional[TextSideFactory] = None,
    resolver: Optional[SourceResolver] = None,
    workers: Optional[int] = None,
    executor: Optional[str] = None,
    resources: Optional[ResourceSpec] = None,
    poll_s: float = DEFAULT_WORKER_POLL_S,
) -> int:
    """``bikebench tune SPEC [key=value ...] [--workers N] [--executor local|slurm|debug]``: run the study,
    print the best; exit code.

    ``tracking_uri``: where the study is logged (the CLI passes ``--tracking-uri`` or
    ``harness.tracking.resolve_tracking_uri``'s default); None skips MLflow. ``workers``, ``executor``
    and ``resources`` override the spec's (command line over spec). Returns 0 on success, 1 when a
    worker task failed (the message names the task and its log), 2 on a bad spec or unusable caches
    (the message on stderr names the file and field).
    """
    try:
        spec = load_sweep_spec(spec_path, overrides)
        source = resolve_source_run(spec, resolver)
        factory = ProblemFactory(spec=spec, source_run=str(source), text_side=text_side)
        result = run_study(spec, factory, workers=workers, tracking_uri=tracking_uri, executor=executor,
                           resources=resources, poll_s=poll_s)
    except (ConfigError, CacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StudyWorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lo, hi = result.lam_interval
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    print(
        f"study {result.study}: best {result.objective} = {100 * result.best_value:.2f}% at {params} "
        f"(λ optimal on [{lo:.4f}, {hi:.4f}]; {result.n_complete} trials on the {result.split} split"
        f"{', TUNED ON THE REPORTED SPLIT' if result.tune_on == 'reported' else ''})"
    )
    print(f"best params: {result.study_dir / 'best.json'}")
    if result.mlflow_run_id:
        print(f"mlflow parent run: {result.mlflow_run_id}")
    return 0
