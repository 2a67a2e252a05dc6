"""Where a study lives and how it samples: storage strings (:func:`resolve_storage`,
:func:`open_storage`), samplers (:func:`make_sampler`), the grid of a grid study and the trials per worker."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

from harness.tuning.spec import FloatRange, IntRange, SweepSpec

#: File names of the default storages under the study directory.
SQLITE_FILE = "optuna.db"
JOURNAL_FILE = "journal.log"


# =============================================================================== storage/sampler
def _absolute_storage(storage: str) -> str:
    """``journal:<path>`` and ``sqlite:///<path>`` with the path made absolute (worker tasks may start
    in another directory); other URLs unchanged."""
    for prefix in ("journal:", "sqlite:///"):
        if storage.startswith(prefix):
            path = storage[len(prefix) :]
            if path and path != ":memory:" and not Path(path).is_absolute():
                return prefix + str(Path(path).resolve())
    return storage


def resolve_storage(spec: SweepSpec, study_dir: Path, executor: Optional[str] = None) -> str:
    """The study's storage string, with absolute paths.

    * ``spec.storage`` when given;
    * else the storage a study under ``study_dir`` already uses: ``journal.log``, then ``optuna.db``
      (a study started on SLURM continues in its journal when resumed locally, and the reverse);
    * else, for ``executor == "slurm"``, the journal file ``journal:<study_dir>/journal.log``: worker
      tasks may run on several nodes, and SQLite's file locking is not safe over a network filesystem;
    * else ``sqlite:///<study_dir>/optuna.db``.
    """
    if spec.storage:
        return _absolute_storage(spec.storage)
    study_dir.mkdir(parents=True, exist_ok=True)
    journal, sqlite = (study_dir / JOURNAL_FILE).resolve(), (study_dir / SQLITE_FILE).resolve()
    if journal.exists():
        return f"journal:{journal}"
    if sqlite.exists():
        if executor == "slurm":
            warnings.warn(
                f"{sqlite}: this study already lives in SQLite, so its SLURM workers share that file; that is safe on "
                f"one node only. For workers on several nodes, start a new study with storage: journal:<path>",
                stacklevel=2,
            )
        return f"sqlite:///{sqlite}"
    if executor == "slurm":
        return f"journal:{journal}"
    return f"sqlite:///{sqlite}"


def open_storage(storage: str) -> Any:
    """``journal:<path>`` → JournalStorage(JournalFileBackend); anything else is an RDB URL."""
    import optuna

    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None)


def grid_space(spec: SweepSpec, k_max: int) -> dict[str, list]:
    """The grid sampler's search space: every searched dimension's discrete values."""
    space = spec.space
    grid: dict[str, list] = {}
    if isinstance(space.k, IntRange):
        high = space.k.high if space.k.high is not None else k_max
        grid["k"] = list(range(space.k.low, high + 1, space.k.step))
    if isinstance(space.transform, list):
        grid["transform"] = list(space.transform)
    if isinstance(space.lam, FloatRange):
        grid["lam"] = space.lam.values()  # type: ignore[assignment]
    return grid


def grid_exhausted(spec: SweepSpec, study: Any, k_max: int) -> bool:
    """A grid study whose every point has a complete trial (Optuna's grid sampler would still run one
    more, duplicate, trial for a worker that joins it then)."""
    import itertools

    import optuna

    grid = grid_space(spec, k_max)
    if spec.sampler != "grid" or not grid:
        return False
    names = sorted(grid)
    done = {tuple(t.params.get(n) for n in names)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    return all(point in done for point in itertools.product(*(grid[n] for n in names)))


def make_sampler(spec: SweepSpec, k_max: int, worker: int = 0) -> Any:
    """TPE (seeded per worker so workers explore differently) or a grid over the discrete space (one seed
    for all workers, so that they agree on the numbering of its points)."""
    import optuna

    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed + worker)
    grid = grid_space(spec, k_max)
    if not grid:  # nothing to search (a single trial evaluates the fixed point)
        return optuna.samplers.RandomSampler(seed=spec.seed + worker)
    # one seed for every worker: the grid sampler shuffles its points by the seed, and workers that
    # shuffled differently would number the points differently and run some twice
    return optuna.samplers.GridSampler(grid, seed=spec.seed)


def trials_per_worker(spec: SweepSpec) -> int:
    """``spec.n_trials``, or 1 when the space has nothing to sample."""
    return spec.n_trials if spec.space.searched else 1


def _create_study(spec: SweepSpec, storage: str, sampler: Any) -> Any:
    import optuna

    return optuna.create_study(
        study_name=spec.study, storage=open_storage(storage), sampler=sampler, direction="maximize", load_if_exists=True
    )
