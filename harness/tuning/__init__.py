"""Optuna studies of the fusion weight λ and the number of attributes k, on cached scores.

A study never decodes a video and never runs the video branch: it reads one evaluation run's caches
(``<run>/cache/``, see docs/ARCHITECTURE.md "Run directory") and

* for each ``k`` a trial picks, rebuilds every video's attribute sentence from its cached ranked
  phrases, encodes the *distinct* sentences once through the frozen text tower (an injected
  ``encode_sentences(list[str]) -> [n, D]`` callable behind a per-sentence embedding cache kept on
  disk), and scores ``S_A = cos(sentence, class)`` against the cached class embeddings;
* solves λ exactly on ``S_V`` and ``S_A`` (:mod:`harness.lambda_exact`; the default ``lam: exact``) or
  samples it and scores the fused top-1 through :class:`harness.lambda_exact.CandidateFusion`.

Tuning uses a held-out part of the training list by default (``tune_on: holdout``: the source run
must have evaluated the ``tune`` split); tuning on the reported split must be asked for
(``tune_on: reported``) and is tagged as such everywhere it is recorded.

Several workers share one study through its storage. ``workers > 1`` go out through submitit as ONE
job array (:func:`run_worker_array`; ``executor: local | slurm | debug`` and ``resources`` in the sweep,
overridden on the command line), each task a :class:`StudyWorker`; the parent waits for the array and
fails naming each failed task and its log. One worker runs in the parent process unless the executor
is ``slurm``. With SLURM and the default storage the study goes to a journal file in its directory.

A finished study's ``best.json`` can feed other tables: :func:`load_study_lambda` reads and checks it,
:func:`fused_metric` recomputes a fused metric of any run's cached split at that λ
(``bikebench table6 --lambda-from STUDY``, :mod:`harness.table6`).

Trials are logged to MLflow after the optimisation (a parent run per study, a child run per trial),
so that logging costs stay outside the trial loop. ``mlflow`` and ``matplotlib`` are imported only
inside the functions that need them.

Shapes: N videos, K classes, D text embedding width, U distinct sentences.

Modules, in dependency order (each imports only those above it); every public name is re-exported
here, so ``from harness.tuning import X`` works for all of them:

* re-exported from :mod:`bike.engine.caches` (the one score-cache reader/writer): :class:`ScoreCache`
  and its readers (:func:`load_score_cache`, :func:`join_score_caches`, :func:`cached_splits`,
  :func:`read_attributes_file`), :class:`CacheError`.
* :mod:`harness.tuning.sentences`: :func:`attribute_sentence`, :class:`SentenceEmbeddingCache`,
  :class:`TextSide`, :class:`AttributeScorer`, :class:`EngineTextSideFactory`.
* :mod:`harness.tuning.spec`: the sweep spec (:class:`SweepSpec`, :class:`SearchSpace`,
  :class:`FloatRange`, :class:`IntRange`, :class:`SourceRef`), :func:`load_sweep_spec`, :class:`SweepSpecError`.
* :mod:`harness.tuning.problem`: :class:`FusionProblem`, :class:`ProblemFactory`, :func:`k_high`,
  :func:`check_split`, :func:`make_objective`.
* :mod:`harness.tuning.storage`: :func:`resolve_storage`, :func:`open_storage`, :func:`make_sampler`,
  grid helpers, :func:`trials_per_worker`.
* :mod:`harness.tuning.workers`: :class:`StudyWorker`, :func:`recover_stale_trials`, :func:`run_worker_array`,
  :func:`worker_parameters`, :func:`worker_threads`, :class:`StudyWorkerError`.
* :mod:`harness.tuning.result`: :class:`StudyResult`, :func:`summarise_study`.
* :mod:`harness.tuning.artifacts`: :func:`write_artifacts`, the plots, :func:`exact_surface`.
* :mod:`harness.tuning.mlflow_log`: :func:`log_study_to_mlflow`.
* :mod:`harness.tuning.study`: :func:`run_study`.
* :mod:`harness.tuning.study_lambda`: :class:`StudyLambda`, :func:`load_study_lambda`,
  :func:`read_study_lambda`, :func:`resolve_study_best`, :func:`fused_metric`, :class:`StudyLambdaError`.
* :mod:`harness.tuning.main`: :func:`tune_main` (``bikebench tune``), :func:`resolve_source_run`.
"""

from __future__ import annotations

import logging

from bike.engine.caches import (
    ATTRIBUTES_FILE,
    CACHE_DIR,
    MANIFEST,
    CacheError,
    ScoreCache,
    cached_splits,
    join_score_caches,
    load_score_cache,
    read_attributes_file,
)
from harness.tuning.sentences import (
    DEFAULT_PROMPT,
    AttributeScorer,
    EncodeSentences,
    EngineTextSideFactory,
    SentenceEmbeddingCache,
    TextSide,
    TextSideFactory,
    attribute_sentence,
)
from harness.tuning.spec import (
    DEFAULT_WORKER_TIMEOUT_MIN,
    OBJECTIVE_METRIC,
    ExecutorName,
    FloatRange,
    IntRange,
    ObjectiveName,
    SearchSpace,
    SourceRef,
    SweepSpec,
    SweepSpecError,
    TransformName,
    load_sweep_spec,
)
from harness.tuning.problem import (
    ATTR_CONSISTENCY_TOL,
    FusionProblem,
    ProblemFactory,
    check_split,
    k_high,
    make_objective,
)
from harness.tuning.storage import (
    JOURNAL_FILE,
    SQLITE_FILE,
    grid_exhausted,
    grid_space,
    make_sampler,
    open_storage,
    resolve_storage,
    trials_per_worker,
)
from harness.tuning.workers import (
    DEFAULT_WORKER_POLL_S,
    RETRY_ATTR,
    WORKER_ATTR,
    StudyWorker,
    StudyWorkerError,
    recover_stale_trials,
    run_worker_array,
    worker_parameters,
    worker_threads,
)
from harness.tuning.result import StudyResult, summarise_study
from harness.tuning.artifacts import SURFACE_LAMBDAS, exact_surface, write_artifacts
from harness.tuning.mlflow_log import log_study_to_mlflow
from harness.tuning.study import run_study
from harness.tuning.study_lambda import (
    BEST_FILE,
    FUSED_METRICS,
    StudyLambda,
    StudyLambdaError,
    fused_metric,
    load_study_lambda,
    read_study_lambda,
    resolve_study_best,
)
from harness.tuning.main import SourceResolver, resolve_source_run, tune_main

#: The package's logger (``harness.tuning``); the modules log to its children (``harness.tuning.<module>``).
log = logging.getLogger(__name__)

__all__ = [
    # scores (bike.engine.caches)
    "ATTRIBUTES_FILE",
    "CACHE_DIR",
    "MANIFEST",
    "CacheError",
    "ScoreCache",
    "cached_splits",
    "join_score_caches",
    "load_score_cache",
    "read_attributes_file",
    # sentences
    "DEFAULT_PROMPT",
    "AttributeScorer",
    "EncodeSentences",
    "EngineTextSideFactory",
    "SentenceEmbeddingCache",
    "TextSide",
    "TextSideFactory",
    "attribute_sentence",
    # spec
    "DEFAULT_WORKER_TIMEOUT_MIN",
    "OBJECTIVE_METRIC",
    "ExecutorName",
    "FloatRange",
    "IntRange",
    "ObjectiveName",
    "SearchSpace",
    "SourceRef",
    "SweepSpec",
    "SweepSpecError",
    "TransformName",
    "load_sweep_spec",
    # problem
    "ATTR_CONSISTENCY_TOL",
    "FusionProblem",
    "ProblemFactory",
    "check_split",
    "k_high",
    "make_objective",
    # storage
    "JOURNAL_FILE",
    "SQLITE_FILE",
    "grid_exhausted",
    "grid_space",
    "make_sampler",
    "open_storage",
    "resolve_storage",
    "trials_per_worker",
    # workers
    "DEFAULT_WORKER_POLL_S",
    "RETRY_ATTR",
    "WORKER_ATTR",
    "StudyWorker",
    "StudyWorkerError",
    "recover_stale_trials",
    "run_worker_array",
    "worker_parameters",
    "worker_threads",
    # result, artifacts, mlflow_log, study
    "StudyResult",
    "summarise_study",
    "SURFACE_LAMBDAS",
    "exact_surface",
    "write_artifacts",
    "log_study_to_mlflow",
    "run_study",
    # study_lambda
    "BEST_FILE",
    "FUSED_METRICS",
    "StudyLambda",
    "StudyLambdaError",
    "fused_metric",
    "load_study_lambda",
    "read_study_lambda",
    "resolve_study_best",
    # main
    "SourceResolver",
    "resolve_source_run",
    "tune_main",
]
