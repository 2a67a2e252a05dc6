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

Modules, in dependency order (each imports only those above it). The package re-exports what its
callers use (``from harness.tuning import X``: loading a sweep, running and continuing a study, reading
a finished study's λ, the score cache); everything else is imported from its module:

* :mod:`bike.engine.caches` (the one score-cache reader/writer): :class:`ScoreCache` and its readers
  (:func:`load_score_cache`, :func:`join_score_caches`, :func:`cached_splits`, :func:`read_attributes_file`),
  :class:`CacheError`; the first, second and last are re-exported here.
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

from bike.engine.caches import CacheError, ScoreCache, load_score_cache
from harness.tuning.spec import SweepSpec, SweepSpecError, load_sweep_spec
from harness.tuning.problem import FusionProblem, ProblemFactory
from harness.tuning.storage import open_storage
from harness.tuning.workers import StudyWorkerError
from harness.tuning.study import run_study
from harness.tuning.study_lambda import StudyLambda, StudyLambdaError, fused_metric, load_study_lambda
from harness.tuning.main import tune_main

#: The package's logger (``harness.tuning``); the modules log to its children (``harness.tuning.<module>``).
log = logging.getLogger(__name__)

__all__ = [
    # scores (bike.engine.caches)
    "CacheError",
    "ScoreCache",
    "load_score_cache",
    # sweep spec, problem, storage, workers
    "SweepSpec",
    "SweepSpecError",
    "load_sweep_spec",
    "FusionProblem",
    "ProblemFactory",
    "open_storage",
    "StudyWorkerError",
    # running a study
    "run_study",
    "tune_main",
    # a finished study's λ (bikebench table6 --lambda-from)
    "StudyLambda",
    "StudyLambdaError",
    "fused_metric",
    "load_study_lambda",
]
