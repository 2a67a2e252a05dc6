"""Pre-flight: what a run's job would find wrong, found by the driver before anything is submitted.

A spec that validates can still name things the job only meets once it runs — after the queue wait,
the world build or the whole training. :func:`check_plan` looks at each planned run that would be
submitted to bike's own engine (``bike.train`` / ``bike.evaluate``; a stand-in job kind registered
with :func:`harness.jobs.register_job_kind` finds nothing of this) and reports:

* settings: ``stage: attributes`` without ``attributes.enabled`` and ``attributes.train``; a backbone,
  attribute encoder or generator that is no open_clip model config; ``model.frames`` beyond the rows
  of the temporal position table; ``train.batch_size`` not divisible by world size x ``grad_accum``;
  an evaluation or selection split ``tune`` without ``data.tuning_holdout``;
* files: ``pretrained`` / ``init_from`` checkpoints; the class file and every list the job reads
  (parsed with :mod:`bike.data.lists`, labels checked against the class file); the lexicon and its
  size against ``attributes.num_attributes``; the K600 split files, and the K600 split lists (each parsed,
  its labels checked against its own split file);
* sizes: a training list (after the tuning holdout) smaller than one optimiser step's batch.

It reads lists and small text files only: no video is decoded and torch is not imported (except the
position-table size when ``model.frames`` exceeds 16). Every problem names the spec, the variant, the
field, the value and what is allowed; :func:`preflight` raises :class:`PreflightError` with all of them
(a dry run prints them as warnings instead: nothing is submitted, and a full-scale plan is often
written where the datasets are not).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from bike.config import DEFAULT_FRAMES, RunConfig, short_repr, short_text
from harness.spec import ResourceSpec, SpecError

#: Problems listed in one error (the count of the rest is given).
MAX_PROBLEMS = 30
#: Suffixes that make a ``pretrained`` value a file path rather than an open_clip tag.
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".pkl")


class PreflightError(SpecError):
    """Runs whose jobs would fail on their inputs; the message lists every problem found."""


# ---------------------------------------------------------------------------------- lookups
@functools.lru_cache(maxsize=1)
def known_backbones() -> frozenset[str]:
    """Model-config names open_clip knows (its package's ``model_configs/*.json``) and bike's own
    (``bike/model_configs``: ``bike-tiny``, ``bike-micro``), read without importing torch."""
    names: set[str] = set()
    dirs = [Path(importlib.util.find_spec("bike").origin).parent / "model_configs"]  # bike.backbone.MODEL_CONFIG_DIR
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) / "model_configs" for p in spec.submodule_search_locations]
    for d in dirs:
        names.update(p.stem for p in d.glob("*.json"))
    return frozenset(names)


def temporal_positions() -> int:
    """Rows of the temporal transformer's position table (:data:`bike.temporal.DEFAULT_MAX_LEN`)."""
    from bike.temporal import DEFAULT_MAX_LEN  # imports torch: asked only for long clips

    return DEFAULT_MAX_LEN


def _is_weight_path(value: str) -> bool:
    return os.sep in value or value.startswith("~") or value.lower().endswith(WEIGHT_SUFFIXES)


def _lexicon_size(path: Path) -> int:
    """Phrases of a lexicon file, counted as :func:`bike.attributes.load_lexicon` reads them."""
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8").splitlines())
    return sum(1 for ln in lines if ln and not ln.startswith("#"))


class _Reader:
    """Lists and class files of one pre-flight, each read once."""

    def __init__(self) -> None:
        self.memo: dict[tuple[str, str], Any] = {}
        #: keys of the (data, split) reads that failed on a label outside the class file's range
        self.out_of_range: set[tuple[str, str]] = set()

    def dataset(self, data: Any, split: str) -> tuple[Optional[list], Optional[str]]:
        """(records, None) or (None, why) for ``split`` of ``data`` (a DataConfig)."""
        from bike.data.lists import LabelRangeError, read_dataset

        key = (data.model_dump_json(), split)
        if key not in self.memo:
            try:
                self.memo[key] = (read_dataset(data, split)[0], None)
            except (OSError, UnicodeDecodeError, ValueError) as exc:  # ListFormatError is a ValueError
                self.memo[key] = (None, short_text(str(exc), 600))
                if isinstance(exc, LabelRangeError):
                    self.out_of_range.add(key)
        return self.memo[key]

    def label_out_of_range(self, data: Any, split: str) -> bool:
        """Whether reading ``split`` of ``data`` failed on a label outside the class file's range."""
        return (data.model_dump_json(), split) in self.out_of_range

    def classes(self, data: Any) -> Optional[str]:
        from bike.data.lists import read_classes

        key = (data.model_dump_json(), "classes")
        if key not in self.memo:
            try:
                read_classes(data)
                self.memo[key] = None
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                self.memo[key] = short_text(str(exc), 600)
        return self.memo[key]


# ---------------------------------------------------------------------------------- checks
def check_config(config: RunConfig, kind: str, world_size: int = 1, planned_dirs: Iterable[str] = (),
                 reader: Optional[_Reader] = None) -> list[str]:
    """Problems the job of ``config`` (job kind ``train`` or ``evaluate``) would meet, one line each
    (``field: got value; why and what is allowed``). ``planned_dirs``: run directories the plan makes
    before this run starts (its ``init_from`` may name one)."""
    reader = reader or _Reader()
    c = config
    out: list[str] = []
    trains = kind == "train"

    # ---- settings
    if c.stage == "attributes" and not (c.attributes.enabled and c.attributes.train):
        out.append(f"attributes.train: got {c.attributes.train} (attributes.enabled: {c.attributes.enabled}); stage "
                   "'attributes' trains the attribute heads: expected attributes.enabled: true and attributes.train: true")
    known = known_backbones()
    names = [("model.backbone", c.model.backbone)]
    if c.attributes.enabled:
        names.append(("attributes.text_encoder", c.attributes.text_encoder))
        if c.attributes.generator_backbone:
            names.append(("attributes.generator_backbone", c.attributes.generator_backbone))
    for field, name in names:
        if name.replace("/", "-") not in known:
            near = difflib.get_close_matches(name.replace("/", "-"), sorted(known), n=4, cutoff=0.5)
            out.append(f"{field}: got {short_repr(name, 80)}; not an open_clip model config (nearest: "
                       f"{', '.join(near) or 'none'}; bike's own: bike-tiny, bike-micro)")
    if c.model.temporal == "transformer" and c.model.frames > 2 * DEFAULT_FRAMES:
        rows = temporal_positions()
        if c.model.frames > rows:
            out.append(f"model.frames: got {c.model.frames}; the temporal transformer's position table has {rows} rows: "
                       f"expected at most {rows} (or model.temporal: none)")
    if trains:
        per_step = world_size * c.train.grad_accum
        if c.train.batch_size % per_step:
            out.append(f"train.batch_size: got {c.train.batch_size}; expected a multiple of world size {world_size} x "
                       f"train.grad_accum {c.train.grad_accum} = {per_step} (the per-rank batch is a whole number)")
    splits_used = {c.eval.split} | ({c.train.select_on} if trains and c.train.select_on != "none" else set())
    if "tune" in splits_used and c.data.tuning_holdout <= 0:
        which = "eval.split" if c.eval.split == "tune" else "train.select_on"
        out.append(f"{which}: got 'tune'; the tune split is held out of the training list: expected "
                   "data.tuning_holdout > 0 (e.g. 0.1), or the split val/test")

    # ---- weights
    weights = [("model.pretrained", c.model.pretrained)]
    if c.attributes.enabled:
        if not c.attributes.shares_text_tower(c.model):
            weights.append(("attributes.text_encoder_pretrained", c.attributes.text_encoder_pretrained))
        weights.append(("attributes.generator_pretrained", c.attributes.generator_pretrained))
    for field, value in weights:
        if value and _is_weight_path(value) and not Path(value).expanduser().is_file():
            what = "a directory" if Path(value).expanduser().is_dir() else "no such file"
            out.append(f"{field}: got {short_repr(value)}; {what}: expected an existing checkpoint file or an "
                       "open_clip tag (e.g. openai)")
    if c.init_from and str(Path(c.init_from)) not in {str(Path(d)) for d in planned_dirs}:
        from bike.rundir import BEST, LATEST, checkpoint_dir

        p = Path(c.init_from).expanduser()
        ok = p.is_file() or (p.is_dir() and any((checkpoint_dir(p) / n).is_file() for n in (BEST, LATEST)))
        if not ok:
            what = "a directory without checkpoints" if p.is_dir() else "no such file or directory"
            out.append(f"init_from: got {short_repr(c.init_from)}; {what}: expected a checkpoint file or a finished "
                       f"run directory (checkpoints/{BEST} or {LATEST})")

    # ---- class file and lists
    problem = reader.classes(c.data)
    if problem:
        out.append(f"data.class_file: {problem}")
    else:
        needed = {"train" if s == "tune" else s for s in splits_used}
        if trains:
            needed.add("train")
        for split in sorted(needed):
            records, why = reader.dataset(c.data, split)
            if why:
                out.append(f"data.{split}_list: {why}")
            elif split == "train" and trains:
                n = len(records)
                if c.data.tuning_holdout > 0:
                    from bike.protocols import holdout_split

                    n = len(holdout_split(records, c.data.tuning_holdout, 0)[0])
                need = -(-c.train.batch_size // c.train.grad_accum)
                if n < need:
                    out.append(f"train.batch_size: got {c.train.batch_size}; the training list holds {n} video(s)"
                               f"{' after the tuning holdout' if c.data.tuning_holdout > 0 else ''}, fewer than one "
                               f"step's batch_size / grad_accum = {need}: expected train.batch_size <= "
                               f"{n * c.train.grad_accum}")

    # ---- lexicon and split files
    if c.attributes.enabled:
        from bike.text import lexicon_path

        path = lexicon_path(c.attributes.lexicon)
        try:
            size = _lexicon_size(path)
        except (OSError, UnicodeDecodeError) as exc:
            size = None
            out.append(f"attributes.lexicon: got {short_repr(c.attributes.lexicon)}; {path}: "
                       f"{'not found' if isinstance(exc, FileNotFoundError) else short_text(str(exc), 200)}: expected "
                       "k400, imagenet1k, world, world_objects or a UTF-8 text file with one phrase per line")
        if size is not None and size < c.attributes.num_attributes:
            out.append(f"attributes.num_attributes: got {c.attributes.num_attributes}; the lexicon {path} holds "
                       f"{size} phrase(s): expected at most {size}")
    if c.eval.protocol == "zero_shot_k600":
        missing = set()
        for i, f in enumerate(c.eval.k600_split_files):
            if not Path(f).expanduser().is_file():
                missing.add(i)
                out.append(f"eval.k600_split_files[{i}]: got {short_repr(f)}; no such file")
        if c.eval.k600_split_lists:
            from bike.protocols import k600_split_configs

            # split i: list i read as the job reads it (data.format, roots), labels within class file i
            for i, split_cfg in enumerate(k600_split_configs(c)):
                if i in missing:
                    continue
                problem = reader.classes(split_cfg.data)
                if problem:
                    out.append(f"eval.k600_split_files[{i}]: {problem}")
                    continue
                _, why = reader.dataset(split_cfg.data, c.eval.split)
                if why:
                    whose = (f" (its labels index the classes of eval.k600_split_files[{i}])"
                             if reader.label_out_of_range(split_cfg.data, c.eval.split) else "")
                    out.append(f"eval.k600_split_lists[{i}]: got {short_repr(c.eval.k600_split_lists[i])}; {why}{whose}")
    return out


def _world_size(cluster: str, resources: ResourceSpec) -> int:
    s = resources.slurm
    tasks = s.tasks_per_node or 1
    return tasks * (s.nodes or 1) if cluster == "slurm" else (tasks if cluster == "local" else 1)


def local_tasks_problem(cluster: str, resources: ResourceSpec) -> Optional[str]:
    """Why several tasks per node cannot run on the local executor (None when they are not asked for)."""
    tasks = resources.slurm.tasks_per_node or 1
    if cluster != "local" or tasks <= 1:
        return None
    return (f"resources.slurm.tasks_per_node: got {tasks} with the local executor; submitit's local executor would start "
            f"{tasks} processes of every job on this machine (the spec asks for one process per GPU of a SLURM node), "
            f"each loading the model and the data: expected 1 (--tasks-per-node 1), or --executor slurm on a cluster")


def missing_files(plan: Any, targets: Optional[Mapping[str, Any]] = None) -> dict[str, list[str]]:
    """The data files the plan's engine runs read that do not exist: ``{path: [run ids]}`` (class files,
    the lists of the splits each run reads, the K600 split lists and class files, checkpoint paths given as
    ``pretrained``)."""
    from harness.jobs import DEFAULT_JOB_KINDS, job_target

    out: dict[str, list[str]] = {}
    for run in plan.runs:
        target = (targets or {}).get(run.kind) or job_target(run.kind)
        if target != DEFAULT_JOB_KINDS.get(run.kind):
            continue
        c = run.config
        splits = {"train" if c.eval.split == "tune" else c.eval.split}
        if run.kind == "train":
            splits |= {"train"} | ({"train" if c.train.select_on == "tune" else c.train.select_on} - {"none"})
        paths = [c.data.class_file] + [getattr(c.data, f"{s}_list", None) for s in sorted(splits)]
        if c.eval.protocol == "zero_shot_k600":
            paths += [*(c.eval.k600_split_lists or []), *c.eval.k600_split_files]
        if c.model.pretrained and _is_weight_path(c.model.pretrained):
            paths.append(c.model.pretrained)
        for path in dict.fromkeys(paths):  # once each (a K600 run's own list is split 1's)
            if path and not Path(path).expanduser().exists():
                out.setdefault(str(path), []).append(run.run_id)
    return out


def check_plan(plan: Any, cluster: str = "local", resources_of: Optional[Callable[[Any], ResourceSpec]] = None,
               targets: Optional[Mapping[str, Any]] = None) -> list[str]:
    """Problems of every run of ``plan`` that bike's engine would run (see the module docstring)."""
    from harness.jobs import DEFAULT_JOB_KINDS, job_target

    reader = _Reader()
    planned = [str(r.run_dir) for r in plan.runs]
    lines: list[str] = []
    for run in plan.runs:
        res = resources_of(run) if resources_of is not None else run.resources
        spec, variant = run.requested_by[0]
        where = f"{run.spec_path}: variants.{variant} (spec {spec}, scale {run.scale}, run {run.run_id})"
        problem = local_tasks_problem(cluster, res)
        if problem:
            lines.append(f"  {where}: {problem}")
        target = (targets or {}).get(run.kind) or job_target(run.kind)
        if target != DEFAULT_JOB_KINDS.get(run.kind):
            continue  # a stand-in engine: it reads none of this
        for problem in check_config(run.config, run.kind, _world_size(cluster, res), planned, reader):
            lines.append(f"  {where}: {problem}")
    return lines


def preflight(plan: Any, cluster: str = "local", resources_of: Optional[Callable[[Any], ResourceSpec]] = None,
              targets: Optional[Mapping[str, Any]] = None, dry_run: bool = False) -> list[str]:
    """Run :func:`check_plan`; raise :class:`PreflightError` listing the problems (with ``dry_run``:
    print them to stderr as warnings). Returns the problem lines."""
    lines = check_plan(plan, cluster, resources_of, targets)
    if not lines:
        return lines
    shown = lines[:MAX_PROBLEMS] + ([f"  ... and {len(lines) - MAX_PROBLEMS} more"] if len(lines) > MAX_PROBLEMS else [])
    absent = missing_files(plan, targets)
    if absent:  # the files to fetch first, once each, before the per-run details
        shown = ([f"  missing file(s) the plan needs ({len(absent)}):"]
                 + [f"    {p}  (read by {len(ids)} run(s))" for p, ids in sorted(absent.items())] + ["  problems per run:"] + shown)
    head = f"pre-flight: {len(lines)} problem(s) the job(s) would meet; nothing was submitted"
    if dry_run:
        print("\n".join([f"warning: {head} (a real run refuses them)"] + shown), file=sys.stderr, flush=True)
        return lines
    raise PreflightError("\n".join([head] + shown))


__all__: Sequence[str] = ("PreflightError", "check_config", "check_plan", "known_backbones", "preflight")
