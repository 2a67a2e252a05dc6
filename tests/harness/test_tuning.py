"""Optuna tuning of k and λ on cached scores: cache reader, sentence cache, objective, studies, MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from bike.config import ConfigError, RunConfig
from harness.lambda_exact import exact_lambda_curve, fused_top1_full, transform_scores
from bike.engine.caches import join_score_caches
from harness.tuning import (
    CacheError,
    ProblemFactory,
    SweepSpec,
    SweepSpecError,
    load_score_cache,
    load_sweep_spec,
    run_study,
    tune_main,
)
from harness.tuning.problem import make_objective
from harness.tuning.sentences import EngineTextSideFactory, SentenceEmbeddingCache, TextSide
from harness.tuning.spec import IntRange

REPO = Path(__file__).resolve().parents[2]
N_CLASSES = 6
MAX_ATTRS = 6
K0 = 3  # the source run's own num_attributes


class WordEncoder:
    """A deterministic bag-of-words text tower (test double; picklable, sent by value to worker tasks).

    Token ``cat<c>`` (a class name) and ``a<c>_<j>`` (an attribute phrase of class c) share class
    c's direction; every other token gets its own hashed direction. A sentence is the sum.
    """

    def __init__(self, dim: int = 24):
        self.dim = dim

    def _vec(self, key: str) -> np.ndarray:
        seed = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).normal(size=self.dim)

    def encode(self, sentences: list[str]) -> np.ndarray:
        out = np.zeros((len(sentences), self.dim), dtype=np.float32)
        for i, s in enumerate(sentences):
            for tok in re.split(r"[ ,]+", s.strip()):
                m = re.fullmatch(r"(?:cat|a)(\d+)(?:_(\d+))?", tok)
                if m:
                    out[i] += 2.0 * self._vec(f"class{m.group(1)}") + 0.3 * self._vec(tok)
                else:
                    out[i] += 0.2 * self._vec(tok)
        return out

    def __call__(self, cache) -> TextSide:
        return TextSide(
            self.encode,
            self.encode([cache.config.model.prompt.format(n) for n in cache.classes]),
            encoder_id=f"words{self.dim}",
            prompt=cache.config.model.prompt,
            separator=cache.config.attributes.separator,
        )


def write_cache_files(run: Path, split: str, ids: list[str], labels: np.ndarray, s_v: np.ndarray, s_a, names: list[str]) -> None:
    """One split's cache, written by the engine's own writer (the layout this reader must follow)."""
    from bike.engine.caches import split_cache_dir, write_cache

    write_cache(split_cache_dir(run, split), video_ids=ids, labels=labels, video_scores=s_v, classes=names,
                split=split, config_hash="test", attr_scores=s_a)


def write_run(
    root: Path, split: str = "tune", n: int = 240, seed: int = 0, shuffle: bool = False, extra_splits: tuple = ()
) -> Path:
    """A run directory with the engine's cache layout (``cache/<split>/`` + ``cache/attributes.json``).

    Attribute phrases are right more often at the top of the ranking, so k trades signal for noise;
    the video branch is a noisy one-hot, so fusion helps.
    """
    rng = np.random.default_rng(seed)
    run = root / f"run-{split}-{seed}"
    labels = rng.integers(0, N_CLASSES, n)
    s_v = rng.normal(scale=0.35, size=(n, N_CLASSES)).astype(np.float32)
    s_v[np.arange(n), labels] += 0.5
    ids = [f"vid{i:04d}" for i in range(n)]
    attributes = {}
    for i, vid in enumerate(ids):
        attributes[vid] = [
            f"a{labels[i] if rng.random() < 0.75 - 0.1 * j else rng.integers(0, N_CLASSES)}_{j}" for j in range(MAX_ATTRS)
        ]
    cfg = RunConfig(
        stage="eval",
        model={"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32},
        attributes={"num_attributes": K0, "max_attributes": MAX_ATTRS, "text_encoder": "bike-micro", "text_encoder_pretrained": None},
        eval={"split": split},
    )
    names = [f"cat{c}" for c in range(N_CLASSES)]
    enc = WordEncoder()
    sent = enc.encode([cfg.model.prompt.format(",".join(attributes[v][:K0])) for v in ids])
    cls = enc.encode([cfg.model.prompt.format(nm) for nm in names])
    sent /= np.linalg.norm(sent, axis=1, keepdims=True)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    s_a = (sent @ cls.T).astype(np.float32)
    order = rng.permutation(n) if shuffle else np.arange(n)
    for sp in (split, *extra_splits):
        write_cache_files(run, sp, [ids[i] for i in order], labels[order], s_v[order], s_a[order], names)
    (run / "cache/attributes.json").write_text(json.dumps({"signature": {"lexicon": "test"}, "videos": attributes}))
    (run / "config.yaml").write_text(cfg.to_yaml())
    return run


def spec_for(run: Path, tmp: Path, **kw) -> SweepSpec:
    raw = {"study": "s1", "source_run": str(run), "n_trials": 6, "results_dir": str(tmp / "results"),
           "storage": f"journal:{tmp / 'optuna.journal'}"}  # the default SQLite storage is covered by tune_main
    raw.update(kw)
    return SweepSpec.model_validate(raw)


@pytest.fixture
def db_dir(tmp_path: Path):
    """A directory for SQLite files: RAM-backed when /dev/shm exists (SQLite's fsyncs on a busy disk
    cost seconds per database), else the test's tmp_path."""
    import shutil
    import tempfile

    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="bikebench-test-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs"))


# ---------------------------------------------------------------------------------- cache reader
def test_load_score_cache_reads_the_engine_layout(run_dir: Path) -> None:
    cache = load_score_cache(run_dir, "tune")
    assert cache.video_scores.shape == cache.attr_scores.shape == (240, N_CLASSES)
    assert cache.labels.shape == (240,) and len(cache.video_ids) == 240
    assert cache.split == "tune" and cache.max_attributes == MAX_ATTRS and cache.classes[2] == "cat2"
    videos = json.loads((run_dir / "cache/attributes.json").read_text())["videos"]
    assert cache.attributes[5] == videos[cache.video_ids[5]]
    assert cache.config.attributes.num_attributes == K0
    assert load_score_cache(run_dir).split == "tune"  # the only split cached


def test_load_score_cache_names_the_bad_file(tmp_path: Path) -> None:
    run = write_run(tmp_path, extra_splits=("val",))
    with pytest.raises(CacheError, match=r"several splits cached \['tune', 'val'\]; name the split"):
        load_score_cache(run)
    with pytest.raises(CacheError, match=r"cache/test/manifest\.json: no cache for split 'test' \(cached: \['tune', 'val'\]\)"):
        load_score_cache(run, "test")
    np.save(run / "cache/tune/labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(CacheError, match=r"tune/labels\.npy: 5 labels for 240 video ids"):
        load_score_cache(run, "tune")
    (run / "cache/val/video_scores.npy").unlink()
    with pytest.raises(CacheError, match=r"val/video_scores\.npy: file not found"):
        load_score_cache(run, "val")
    run2 = write_run(tmp_path, seed=1)
    attrs = json.loads((run2 / "cache/attributes.json").read_text())
    attrs["videos"].pop("vid0003")
    (run2 / "cache/attributes.json").write_text(json.dumps(attrs))
    with pytest.raises(CacheError, match=r"attributes\.json: 1 of 240 video ids of split 'tune' have no attributes"):
        load_score_cache(run2)


def test_join_by_video_id_not_row_order(tmp_path: Path) -> None:
    a = load_score_cache(write_run(tmp_path / "a", seed=2))
    b = load_score_cache(write_run(tmp_path / "b", seed=2, shuffle=True))  # same videos, rows permuted
    assert b.video_ids != a.video_ids
    joined = join_score_caches(a, b)
    np.testing.assert_array_equal(joined.attr_scores, a.attr_scores)
    assert joined.attributes == a.attributes
    c = load_score_cache(write_run(tmp_path / "c", seed=3))  # other labels for the same ids
    with pytest.raises(CacheError, match="label of video"):
        join_score_caches(a, c)
    b.video_ids = [v + "x" for v in b.video_ids]
    with pytest.raises(CacheError, match="240 video ids .* are absent"):
        join_score_caches(a, b)
    b.classes = list(reversed(b.classes))
    with pytest.raises(CacheError, match="class list differs"):
        join_score_caches(a, b)


# -------------------------------------------------------------------------------- sentence cache
class CountingEncoder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.inner = WordEncoder()

    def __call__(self, sentences: list[str]) -> np.ndarray:
        self.calls.extend(sentences)
        return self.inner.encode(sentences)


def test_sentence_cache_encodes_each_sentence_once_across_instances(tmp_path: Path) -> None:
    enc = CountingEncoder()
    path = tmp_path / "s.npz"
    cache = SentenceEmbeddingCache(enc, path, encoder_id="e1", batch_size=2)
    first = cache.embed(["x a1_0", "y", "x a1_0", "z"])
    assert enc.calls == ["x a1_0", "y", "z"]
    np.testing.assert_allclose(first[0], first[2])
    cache.embed(["y", "w"])
    assert enc.calls[-1] == "w" and len(enc.calls) == 4
    cache.save()
    again = SentenceEmbeddingCache(enc, path, encoder_id="e1")
    np.testing.assert_allclose(again.embed(["z", "w"]), cache.embed(["z", "w"]))
    assert len(enc.calls) == 4  # read back from disk, not re-encoded
    other = SentenceEmbeddingCache(enc, path, encoder_id="e2")  # another encoder: no reuse
    other.embed(["z"])
    assert len(enc.calls) == 5


def test_attribute_scores_recomputed_at_the_runs_k_match_the_cache(run_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(run_dir, tmp_path)
    problem = ProblemFactory(spec, str(run_dir), text_side=WordEncoder(), study_dir=str(tmp_path / "st"))()
    assert problem.diagnostics["attr_cache_k"] == K0
    assert problem.diagnostics["attr_cache_max_abs_diff"] < 1e-5
    s1 = problem.attr_scores(1)
    assert s1.shape == (240, N_CLASSES) and not np.allclose(s1, problem.attr_scores(K0))
    # The embedding cache holds exactly the distinct sentences of the two k used so far.
    distinct = set(problem.scorer.sentences(1)) | set(problem.scorer.sentences(K0))
    assert len(problem.scorer.cache) == problem.scorer.cache.n_encoded == len(distinct) < 2 * 240


# ------------------------------------------------------------------------------------- spec YAML
def test_spec_yaml_overrides_and_named_errors(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"study": "s", "source_run": "r", "space": {"lam": "exact", "k": {"low": 2}}}))
    spec = load_sweep_spec(path, ["n_trials=7", "space.k.high=4", "tune_on=reported"])
    assert spec.n_trials == 7 and spec.space.k == IntRange(low=2, high=4) and spec.tune_on == "reported"
    assert spec.space.exact_lambda and spec.objective == "fused_top1" and spec.sampler == "tpe"
    with pytest.raises(SweepSpecError, match=r"sweep\.yaml.*\n  space\.lam"):
        load_sweep_spec(path, ["space.lam=1.5"])
    with pytest.raises(SweepSpecError, match=r"n_trial: got 3; unknown field"):
        load_sweep_spec(path, ["n_trial=3"])
    with pytest.raises(SweepSpecError, match="sampler 'grid' needs space.lam"):
        load_sweep_spec(path, ["sampler=grid", "space.lam={low: 0, high: 1}"])
    with pytest.raises(SweepSpecError, match=r"objective: got 'top5'; expected one of"):
        load_sweep_spec(path, ["objective=top5"])
    with pytest.raises(SweepSpecError, match="expected key=value"):
        load_sweep_spec(path, ["n_trials"])
    with pytest.raises(SweepSpecError, match="file not found"):
        load_sweep_spec(tmp_path / "nope.yaml")
    assert load_sweep_spec(path, ["space.lam={low: 0.2, high: 0.8, step: 0.2}"]).space.lam.values() == [0.2, 0.4, 0.6, 0.8]


def test_shipped_sweeps_validate() -> None:
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        spec = load_sweep_spec(path)
        assert spec.tune_on == "holdout", path  # shipped studies never tune on the reported split


# ------------------------------------------------------------------------------------ objective
def test_exact_objective_is_the_best_of_a_dense_lambda_grid(run_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(run_dir, tmp_path)
    problem = ProblemFactory(spec, str(run_dir), text_side=WordEncoder(), study_dir=str(tmp_path / "st"))()
    objective = make_objective(problem, spec.space, k_max=MAX_ATTRS)
    trial = optuna.trial.FixedTrial({"k": 2})
    value = objective(trial)
    a = transform_scores(problem.cache.video_scores)
    b = transform_scores(problem.attr_scores(2))
    grid = np.linspace(0, 1, 2001)
    brute = np.array([(fused_top1_full(a, b, x) == problem.labels).mean() for x in grid])
    assert value == pytest.approx(brute.max(), abs=1e-12)
    lam, lo, hi = (trial.user_attrs[x] for x in ("lam", "lam_lo", "lam_hi"))
    assert lo < lam < hi and (fused_top1_full(a, b, lam) == problem.labels).mean() == pytest.approx(value)


def test_sampled_objective_equals_full_fusion(run_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(run_dir, tmp_path, space={"lam": {"low": 0, "high": 1}, "k": {"low": 1, "high": 4}, "transform": ["softmax", "cosine"]})
    problem = ProblemFactory(spec, str(run_dir), text_side=WordEncoder(), study_dir=str(tmp_path / "st"))()
    objective = make_objective(problem, spec.space, k_max=MAX_ATTRS)
    for k, lam, tf in [(1, 0.3, "softmax"), (4, 0.65, "cosine"), (2, 0.0, "softmax")]:
        value = objective(optuna.trial.FixedTrial({"k": k, "lam": lam, "transform": tf}))
        a = transform_scores(problem.cache.video_scores, tf).astype(np.float32)
        b = transform_scores(problem.attr_scores(k), tf).astype(np.float32)
        assert value == (fused_top1_full(a, b, lam) == problem.labels).mean()


def test_mean_class_objective_uses_mean_class_accuracy(run_dir: Path, tmp_path: Path) -> None:
    spec = spec_for(run_dir, tmp_path, objective="fused_mean_class", space={"k": 3})
    problem = ProblemFactory(spec, str(run_dir), text_side=WordEncoder(), study_dir=str(tmp_path / "st"))()
    value = make_objective(problem, spec.space)(optuna.trial.FixedTrial({}))
    curve = exact_lambda_curve(problem.cache.video_scores, problem.attr_scores(3), problem.labels, metric="mean_class")
    assert value == curve.best()[2]


# ---------------------------------------------------------------------------------------- studies
def test_run_study_writes_best_and_logs_to_mlflow(run_dir: Path, tmp_path: Path, db_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    spec = spec_for(run_dir, tmp_path, n_trials=8, space={"lam": {"low": 0, "high": 1}, "k": {"low": 1}},
                    storage=f"sqlite:///{db_dir / 'optuna.db'}")
    uri = f"sqlite:///{db_dir / 'mlflow.db'}"
    factory = ProblemFactory(spec, str(run_dir), text_side=WordEncoder())
    result = run_study(spec, factory, tracking_uri=uri, artifact_location=(tmp_path / "art").as_uri())
    best = json.loads((spec.study_dir() / "best.json").read_text())
    assert best["best_params"] == result.best_params and set(best["best_params"]) == {"k", "lam"}
    assert best["n_complete"] == 8 and best["tune_on"] == "holdout" and best["split"] == "tune"
    assert best["best_value"] <= best["exact_best_value"] + 1e-12  # sampling never beats the exact optimum
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bikebench-tune")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_id == result.mlflow_run_id][0]
    # the tag names of harness.tracking's parent runs (harness.mlflow_runs)
    assert parent.data.tags["bikebench.parent_key"] == f"study:{spec.study}" and parent.data.tags["bikebench.kind"] == "study"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8 and {"k", "lam"} <= set(children[0].data.params)
    # percent, like every run's metrics (the study's value is a fraction); trials named by their parameters
    assert parent.data.metrics["best_fused_top1"] == pytest.approx(100 * result.best_value)
    trial = min(children, key=lambda r: int(r.data.tags["optuna_trial"]))
    assert trial.info.run_name.startswith("#0 k=") and " lam=" in trial.info.run_name
    assert set(trial.data.metrics) == {"tune/fused_top1"} and 0 <= trial.data.metrics["tune/fused_top1"] <= 100
    import optuna

    loaded = optuna.load_study(study_name=spec.study, storage=result.storage)
    assert loaded.metric_names == ["tune/fused_top1"]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best.json", "lambda_curve.png", "optimization_history.png", "contour.png", "param_importances.png"} <= arts
    # Continuing the study logs only the new trials under the same parent.
    spec2 = spec.model_copy(update={"n_trials": 2})
    result2 = run_study(spec2, ProblemFactory(spec2, str(run_dir), text_side=WordEncoder()), tracking_uri=uri)
    assert result2.mlflow_run_id == result.mlflow_run_id and result2.n_complete == 10
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(int(r.data.tags["optuna_trial"]) for r in children) == list(range(10))


def test_exact_lambda_study_encodes_each_sentence_once(run_dir: Path, tmp_path: Path) -> None:
    enc = WordEncoder()
    calls: list[str] = []

    class Spy(WordEncoder):
        def encode(self, sentences):
            calls.extend(sentences)
            return enc.encode(sentences)

    spec = spec_for(run_dir, tmp_path, n_trials=12, sampler="grid", space={"k": {"low": 1, "high": 4}})
    result = run_study(spec, ProblemFactory(spec, str(run_dir), text_side=Spy()))
    assert result.n_complete == 4  # the grid has 4 points and stops
    assert len(calls) == len(set(calls))  # no sentence encoded twice
    assert 0.0 <= result.lam_interval[0] < result.best_lambda < result.lam_interval[1] <= 1.0
    plots = json.loads((spec.study_dir() / "plots.json").read_text())
    assert plots["optimization_history"] == "ok" and plots["contour"].startswith("skipped")
    # instead of Optuna's contour (one sampled parameter): the exact objective over k × λ
    assert plots["exact_k_lambda"] == "ok" and "exact_k_lambda.png" in plots["contour"]
    assert (spec.study_dir() / "exact_k_lambda.png").stat().st_size > 0
    surface = json.loads((spec.study_dir() / "exact_k_lambda.json").read_text())
    assert surface["k"] == [1, 2, 3, 4] and len(surface["values"]) == 4 and len(surface["values"][0]) == len(surface["lam"])
    problem = ProblemFactory(spec, str(run_dir), text_side=WordEncoder())()
    for k, row in zip(surface["k"], surface["values"]):  # each row is the exact objective of that k at each λ
        for j in (0, 100, 250, 400):
            assert row[j] == pytest.approx(problem.evaluate(k, surface["lam"][j]), abs=1e-12)
    best_row = surface["values"][surface["k"].index(result.best_params["k"])]
    assert max(max(r) for r in surface["values"]) == pytest.approx(max(best_row)) == pytest.approx(result.best_value)


@pytest.fixture
def by_value():
    """This module's test doubles (WordEncoder, ...) travel to submitit's worker processes by value: a worker
    process cannot import tests/."""
    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def _task_summaries(study_dir: Path) -> list[dict]:
    """The summary line each worker task printed to its submitit stdout log, in task order."""
    folders = list((study_dir / "submitit").iterdir())
    assert len(folders) == 1, folders  # one folder per invocation
    out = []
    for log in sorted(folders[0].glob("*/*_log.out")):
        lines = [ln for ln in log.read_text().splitlines() if " worker " in ln and ln.rstrip().endswith("}")]
        out.append(json.loads(lines[-1].split(": ", 1)[1]))
    return sorted(out, key=lambda s: s["worker"])


@pytest.mark.parametrize("storage,sampler", [("sqlite", "tpe"), ("journal", "grid")])
def test_two_workers_as_one_local_job_array_lose_no_trial(
    run_dir: Path, tmp_path: Path, db_dir: Path, by_value, storage: str, sampler: str
) -> None:
    """Two submitit LocalExecutor tasks (two other processes) share one study: every trial is kept (TPE:
    2 × n_trials; grid: every point visited)."""
    url = f"sqlite:///{db_dir / 'o.db'}" if storage == "sqlite" else f"journal:{tmp_path / 'o.journal'}"
    space = {"lam": {"low": 0, "high": 1}, "k": {"low": 1}} if sampler == "tpe" else {"k": {"low": 1, "high": 4}}
    spec = spec_for(run_dir, tmp_path, n_trials=5 if sampler == "tpe" else 4, workers=2, storage=url, sampler=sampler,
                    space=space)
    logs: list[str] = []
    result = run_study(spec, ProblemFactory(spec, str(run_dir), text_side=WordEncoder()), executor="local", poll_s=0.2,
                       log=logs.append)
    from harness.tuning import open_storage

    study = optuna.load_study(study_name="s1", storage=open_storage(url))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert result.n_complete == len(complete) == len(study.trials)
    summaries = _task_summaries(spec.study_dir())
    assert [s["worker"] for s in summaries] == [0, 1]
    assert len({s["pid"] for s in summaries} | {os.getpid()}) == 3  # two processes, neither of them this one
    assert {s["threads"] for s in summaries} == {max(1, (os.cpu_count() or 1) // 2)}  # the cores are shared
    assert sorted(n for s in summaries for n in s["trials"]) == sorted(t.number for t in complete)
    if sampler == "tpe":
        assert result.n_complete == 2 * 5 and [len(s["trials"]) for s in summaries] == [5, 5]
    else:
        assert sorted(t.params["k"] for t in complete) == [1, 2, 3, 4]  # the grid is covered, each point once
    best = json.loads((spec.study_dir() / "best.json").read_text())
    assert best["worker_array"]["executor"] == "local" and best["worker_array"]["workers"] == 2
    assert best["n_complete"] == result.n_complete and best["classes"] == [f"cat{c}" for c in range(N_CLASSES)]
    assert "2 worker(s) submitted as one local job array" in logs[0]


class FailsInFirstWorker(WordEncoder):
    """A text side that breaks in the first worker process that builds it (and only there)."""

    def __init__(self, parent_pid: int, marker: Path):
        super().__init__()
        self.parent_pid = parent_pid
        self.marker = str(marker)

    def __call__(self, cache) -> TextSide:
        if os.getpid() != self.parent_pid:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return super().__call__(cache)
            raise RuntimeError("text tower unavailable on this node (injected failure)")
        return super().__call__(cache)


def test_a_failing_worker_task_names_the_task_and_its_log(run_dir: Path, tmp_path: Path, by_value, capsys) -> None:
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump({"study": "failing", "source_run": str(run_dir), "n_trials": 3, "workers": 2,
                                    "results_dir": str(tmp_path / "res"), "storage": f"journal:{tmp_path / 'j.log'}",
                                    "space": {"k": {"low": 1, "high": 3}, "lam": {"low": 0, "high": 1}}}))
    text_side = FailsInFirstWorker(os.getpid(), tmp_path / "failed-once")
    assert tune_main(path, [], None, text_side=text_side, executor="local", poll_s=0.2) == 1
    err = capsys.readouterr().err
    m = re.search(r"study failing: 1 of 2 worker task\(s\) of the local job array failed .*\n"
                  r"  array task ([01]) \(job (\d+)\): RuntimeError: text tower unavailable on this node \(injected failure\)\n"
                  r"    log: (\S+_log\.err)", err)
    assert m, err
    log = Path(m.group(3))
    assert log.is_file() and log.is_relative_to(tmp_path / "res/studies/failing/submitit")
    assert "injected failure" in log.read_text()
    assert not (tmp_path / "res/studies/failing/best.json").exists()
    # the other task's trials are kept in the study
    from harness.tuning import open_storage

    study = optuna.load_study(study_name="failing", storage=open_storage(f"journal:{tmp_path / 'j.log'}"))
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3


class StallsInFirstWorkerTrial(WordEncoder):
    """A text side whose first encoding in a worker process (never the parent) stalls until the task's
    time limit: the trial that asked for it is cut off mid-way, as by a preemption."""

    def __init__(self, parent_pid: int, marker: Path):
        super().__init__()
        self.parent_pid = parent_pid
        self.marker = str(marker)

    def encode(self, sentences: list[str]) -> np.ndarray:
        attribute_sentences = any(re.search(r"\ba\d+_\d+", s) for s in sentences)  # not the class prompts
        if os.getpid() != self.parent_pid and attribute_sentences:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                time.sleep(120)  # the checkpoint signal comes long before this ends
            except FileExistsError:
                pass
        return super().encode(sentences)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_a_worker_cut_off_by_its_time_limit_is_requeued_and_loses_nothing(run_dir: Path, tmp_path: Path, by_value, sampler) -> None:
    """A real local timeout: the stalled task gets the checkpoint signal, is requeued and marks its
    cut-off trial FAIL. TPE: that point is run again first and the study reaches 2 x n_trials complete
    trials. Grid: the idle worker already took the running point (Optuna's grid sampler does), so it
    is not run a third time, and the grid ends covered, each point once."""
    url = f"journal:{tmp_path / 'o.journal'}"
    space = {"lam": {"low": 0, "high": 1}, "k": {"low": 1}} if sampler == "tpe" else {"k": {"low": 1, "high": 4}}
    # the checkpoint signal 8 s after each (re)start; the stalled trial would take 120 s
    spec = spec_for(run_dir, tmp_path, n_trials=4, workers=2, storage=url, sampler=sampler, space=space,
                    resources={"timeout_min": 12 / 60, "signal_delay_s": 4, "max_num_timeout": 3})
    text_side = StallsInFirstWorkerTrial(os.getpid(), tmp_path / "stalled-once")
    result = run_study(spec, ProblemFactory(spec, str(run_dir), text_side=text_side), executor="local", poll_s=0.2,
                       log=lambda m: None)
    from harness.tuning import open_storage
    from harness.tuning.workers import RETRY_ATTR, WORKER_ATTR

    assert (tmp_path / "stalled-once").exists()  # a trial did stall
    study = optuna.load_study(study_name="s1", storage=open_storage(url))
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(failed) == 1 and len(failed) + len(complete) == len(study.trials)  # nothing left RUNNING
    summaries = _task_summaries(spec.study_dir())
    assert sorted(s["attempts"] for s in summaries) == [1, 2]
    assert result.n_complete == len(complete)
    retry = [t for t in complete if t.user_attrs.get(RETRY_ATTR) == failed[0].number]
    if sampler == "tpe":
        assert len(complete) == 2 * 4  # the requeued task ran only what was left
        assert len(retry) == 1 and retry[0].params == failed[0].params  # the cut-off point, run again
        assert retry[0].user_attrs[WORKER_ATTR] == failed[0].user_attrs[WORKER_ATTR]  # by the requeued task
    else:
        assert sorted(t.params["k"] for t in complete) == [1, 2, 3, 4] and not retry


def test_debug_executor_runs_the_array_in_process(run_dir: Path, tmp_path: Path) -> None:
    """executor: debug (from the spec) runs the array's tasks one after the other in this process."""
    import socket

    spec = spec_for(run_dir, tmp_path, n_trials=2, workers=2, space={"k": {"low": 1, "high": 3}}, executor="debug")
    result = run_study(spec, ProblemFactory(spec, str(run_dir), text_side=WordEncoder()), log=lambda m: None)
    assert result.extras["worker_array"] == {"executor": "debug", "workers": 2, "trials_per_worker": [2, 2],
                                             "hosts": [socket.gethostname()]}
    assert result.n_complete == 4


def test_worker_resources_from_spec_and_command_line(run_dir: Path, tmp_path: Path) -> None:
    from harness.spec import ResourceSpec
    from harness.tuning.storage import resolve_storage
    from harness.tuning.workers import worker_parameters

    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump({
        "study": "res", "source_run": str(run_dir), "executor": "slurm",
        "resources": {"timeout_min": 20, "slurm": {"partition": "cpu", "cpus_per_task": 2, "mem": "4G", "account": "a",
                                                    "qos": "q", "array_parallelism": 4, "time": "00:30:00"}}}))
    spec = load_sweep_spec(path)
    params = worker_parameters("slurm", spec.resources, "tune-res")
    assert params["partition"] == "cpu" and params["cpus_per_task"] == 2 and params["mem"] == "4G"
    assert params["account"] == "a" and params["qos"] == "q" and params["array_parallelism"] == 4 and params["time"] == 30
    # the command line wins over the spec
    merged = spec.resources.merged(ResourceSpec(slurm={"partition": "gpu"}))
    assert worker_parameters("slurm", merged, "x")["partition"] == "gpu" and merged.slurm.mem == "4G"
    assert SweepSpec.model_validate({"study": "d", "source_run": "r"}).resources.timeout_min == 60  # always a limit
    with pytest.raises(SweepSpecError, match=r"resources\.slurm\.partiton: got 'x'; unknown field \(allowed: account, "):
        load_sweep_spec(path, ["resources.slurm.partiton=x"])
    with pytest.raises(SweepSpecError, match=r"executor: got 'pbs'; expected one of 'local', 'slurm' or 'debug'"):
        load_sweep_spec(path, ["executor=pbs"])
    # SLURM + the default storage: a journal file in the study directory (SQLite over NFS is not safe)
    study_dir = tmp_path / "sd"
    assert resolve_storage(spec, study_dir, "slurm") == f"journal:{(study_dir / 'journal.log').resolve()}"
    assert resolve_storage(spec, study_dir, "local") == f"sqlite:///{(study_dir / 'optuna.db').resolve()}"
    (study_dir / "journal.log").write_text("")
    assert resolve_storage(spec, study_dir, "local").startswith("journal:")  # an existing study keeps its storage
    # a SLURM limit that cannot work is refused before anything is submitted (no cluster needed)
    bad = spec.model_copy(update={"resources": ResourceSpec(timeout_min=1)})
    with pytest.raises(ConfigError, match=r"expected resources\.timeout_min >= 2"):
        run_study(bad, ProblemFactory(bad, str(run_dir), text_side=WordEncoder()), workers=2, study_dir=tmp_path / "b")
    assert not (tmp_path / "b" / "submitit").exists()
    slow = spec.model_copy(update={"timeout_s": 1200.0})  # Optuna's timeout must end before the task's limit (20 min)
    with pytest.raises(SweepSpecError, match=r"timeout_s=1200 is not below the worker tasks' wall-clock limit "
                                             r"resources\.timeout_min=20"):
        run_study(slow, ProblemFactory(slow, str(run_dir), text_side=WordEncoder()), workers=2, study_dir=tmp_path / "b")


def test_holdout_refuses_the_reported_split(tmp_path: Path) -> None:
    val_run = write_run(tmp_path, split="val")
    spec = spec_for(val_run, tmp_path, space={"k": 2})
    with pytest.raises(CacheError, match=r"no cache for split 'tune' \(cached: \['val'\]\)"):
        ProblemFactory(spec, str(val_run), text_side=WordEncoder())()
    with pytest.raises(ValueError, match="split='val' is a reported split but tune_on is 'holdout'"):
        spec_for(val_run, tmp_path, split="val")
    spec = spec_for(val_run, tmp_path, space={"k": 2}, tune_on="reported", n_trials=1)
    result = run_study(spec, ProblemFactory(spec, str(val_run), text_side=WordEncoder()))
    assert json.loads((spec.study_dir() / "best.json").read_text())["tuned_on_reported_split"] is True
    assert result.split == "val"


def test_tune_main_prints_the_best_and_reports_bad_specs(run_dir: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump({"study": "cli", "source_run": str(run_dir), "n_trials": 3,
                                    "results_dir": str(tmp_path / "res"), "space": {"k": {"low": 1, "high": 3}}}))
    assert tune_main(path, [], None, text_side=WordEncoder()) == 0
    out = capsys.readouterr().out
    assert "study cli: best fused_top1 = " in out and "best.json" in out
    assert (tmp_path / "res/studies/cli/best.json").exists()
    assert tune_main(path, ["space.k.high=99"], None, text_side=WordEncoder()) == 2
    assert "space.k: high=99 exceeds the 6 attributes cached" in capsys.readouterr().err
    assert tune_main(path, ["source_run=null"], None) == 2
    assert "give source_run" in capsys.readouterr().err
    # A study name stays bound to what it measured.
    assert tune_main(path, ["objective=fused_mean_class"], None, text_side=WordEncoder()) == 2
    assert "was run with objective='fused_top1', now 'fused_mean_class'" in capsys.readouterr().err
    # source: spec + variant, through the harness's resolver.
    seen = []
    resolver = lambda ref: seen.append((ref.spec, ref.variant, ref.scale)) or run_dir  # noqa: E731
    over = ["source_run=null", "source={spec: experiments/table6.yaml, variant: bike, scale: smoke}", "study=cli2"]
    assert tune_main(path, over, None, text_side=WordEncoder(), resolver=resolver) == 0
    assert seen == [("experiments/table6.yaml", "bike", "smoke")]


def test_lambda_only_study_on_cached_attr_scores(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    (run / "cache/attributes.json").unlink()
    spec = spec_for(run, tmp_path, space={"k": None}, n_trials=1)
    result = run_study(spec, ProblemFactory(spec, str(run)))
    curve = exact_lambda_curve(*(np.load(run / f"cache/tune/{n}.npy") for n in ("video_scores", "attr_scores", "labels")))
    assert result.best_value == curve.best()[2] and result.best_params == {"lam": curve.best_lambda}
    with pytest.raises(CacheError, match="attributes.json: missing"):
        ProblemFactory(spec_for(run, tmp_path), str(run))()


@pytest.mark.parametrize("trained", [False, True])
def test_engine_text_side_reproduces_the_evaluated_attribute_scores(tmp_path: Path, trained: bool) -> None:
    """Default text side = the run's own attributes branch: at the run's k it must give back the
    attribute scores evaluation cached — plain text tower (bike-micro, random weights seeded like
    evaluation), or with trained heads read from the run's checkpoints/best.pt."""
    import torch

    from bike.engine import runner
    from bike.engine.checkpoint import save_checkpoint
    from bike.engine.eval_loop import attribute_scores
    from bike.engine.train_loop import reseed

    run = write_run(tmp_path)
    cache = load_score_cache(run)
    if trained:
        cfg = cache.config.model_copy(update={"attributes": cache.config.attributes.model_copy(update={"train": True})})
        (run / "config.yaml").write_text(cfg.to_yaml())
        cache = load_score_cache(run)
    videos = json.loads((run / "cache/attributes.json").read_text())["videos"]
    reseed(cache.config.seed)
    model = runner.build_model(cache.config, cache.classes, torch.device("cpu"))
    if trained:  # "trained" heads: other weights than the seeded initialisation
        with torch.no_grad():
            for prm in model.attributes.heads.parameters():
                prm.add_(0.3 * torch.randn_like(prm))
        save_checkpoint(run / "checkpoints/best.pt", {"model": model.state_dict()})
    s_a = attribute_scores(model, cache.video_ids, videos)  # what bike.evaluate caches
    write_cache_files(run, "tune", cache.video_ids, cache.labels, cache.video_scores, s_a, cache.classes)
    spec = spec_for(run, tmp_path)
    problem = ProblemFactory(spec, str(run), study_dir=str(tmp_path / "st"))()  # default: EngineTextSideFactory
    assert problem.diagnostics["attr_cache_k"] == K0
    assert problem.diagnostics["attr_cache_max_abs_diff"] < 1e-5
    assert not np.allclose(problem.attr_scores(1), s_a)
    if not trained:
        cfg = cache.config.model_copy(update={"attributes": cache.config.attributes.model_copy(update={"enabled": False})})
        cache.config = cfg
        with pytest.raises(CacheError, match="attributes.enabled is false"):
            EngineTextSideFactory()(cache)


def test_cli_tune_workers_executor_and_resources_override_the_sweep(tmp_path: Path, capsys) -> None:
    """`bikebench tune SWEEP --workers 2 --executor debug`: the command line beats the sweep's executor/workers;
    worker resources given on the command line reach the SLURM parameters (checked before any submission)."""
    from harness.cli import main as bikebench

    run = write_run(tmp_path)
    (run / "cache/attributes.json").unlink()  # k: null: cached attribute scores, no text tower needed
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump({"study": "cli_workers", "source_run": str(run), "n_trials": 2, "workers": 1,
                                    "executor": "local", "results_dir": str(tmp_path / "res"),
                                    "space": {"k": None, "lam": {"low": 0, "high": 1}}}))
    assert bikebench(["tune", str(path), "--workers", "2", "--executor", "debug", "--no-track"]) == 0
    best = json.loads((tmp_path / "res/studies/cli_workers/best.json").read_text())
    assert best["worker_array"]["executor"] == "debug" and best["worker_array"]["trials_per_worker"] == [2, 2]
    assert best["n_complete"] == 4
    capsys.readouterr()
    rc = bikebench(["tune", str(path), "study=cli_slurm", "--workers", "2", "--executor", "slurm", "--timeout-min", "1",
                    "--no-track"])
    assert rc == 2
    assert "resources.signal_delay_s=15 with a 1-min SLURM limit" in capsys.readouterr().err
    assert not (tmp_path / "res/studies/cli_slurm/submitit").exists()
    assert bikebench(["tune", str(path), "--workers", "0", "--no-track"]) == 2
    assert "--workers 0; expected >= 1" in capsys.readouterr().err


def test_grid_workers_agree_on_the_points_so_interleaved_workers_never_repeat_one(run_dir: Path, tmp_path: Path) -> None:
    """Two workers' grid samplers on one storage, asking in turn while the other's trial runs: every
    point is handed out once (Optuna numbers grid points by its seed, so all workers share one seed)."""
    from harness.tuning.storage import make_sampler

    spec = spec_for(run_dir, tmp_path, sampler="grid", space={"k": {"low": 1, "high": 8}}, workers=2)
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="g", storage=storage, direction="maximize")
    workers = [optuna.load_study(study_name="g", storage=storage, sampler=make_sampler(spec, 8, w)) for w in (0, 1)]
    seen = []
    for _ in range(3):  # 6 of the 8 points (the grid sampler stops the study once the grid is done)
        running = [(study, study.ask()) for study in workers]  # both trials running at once
        for study, trial in running:
            seen.append(trial.suggest_int("k", 1, 8))
            study.tell(trial, 0.5)
    assert len(set(seen)) == len(seen) == 6, seen
