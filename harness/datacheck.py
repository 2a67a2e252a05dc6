"""``bikebench data check``: every list, class file, video and frame directory a spec's runs need.

1. The lists: every (data config, split) the runs of a spec need at a scale (or one explicit
   ``--format/--root/--list/--class-file``) is parsed with ``bike.data.lists.read_dataset``; per split
   the report gives the records, classes and the label range. A list that cannot be parsed is bad input
   (exit 2, the message names file, line and field).
2. The files: each distinct video file / frame directory is checked by ``bike.data.integrity.check_path``
   at a decode level (``none`` | ``sample N`` | ``all``), in parallel as ONE submitit job array
   (``local`` processes, ``slurm`` tasks, or ``debug`` in this process); the tasks' results are merged.
3. Resumable: results are cached in a JSON file (``<results>/cache/datacheck.json``) keyed by path,
   valid while the file's fingerprint (size + mtime; a frame directory's entries) is the same and the
   cached check was at least as deep. Tasks write their results as they go to fragments beside the
   cache (``datacheck.json.d/``), merged at the next start, so an interrupted check loses nothing.
4. The report names each bad file and why (``bike.data.integrity.REASONS``), as a table or ``--json``;
   ``--write-exclude FILE`` writes the bad entries as an exclusion list a spec names explicitly
   (``data.exclude_list``).

Exit codes (``harness.cli``): 0 every file is fine, 1 bad files found, 2 bad input.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

from bike.config import ConfigError, DataConfig

#: Depth of each decode level: a cached check at a deeper level covers a shallower request.
_DEPTH = {"none": 0, "sample": 1, "all": 2}
#: Results a task collects before writing them to its cache fragment.
FRAGMENT_EVERY = 25
DEFAULT_TIMEOUT_MIN = 60.0


@dataclass(frozen=True)
class DecodeLevel:
    level: str  # none | sample | all
    sample: int = 8

    @property
    def label(self) -> str:
        return f"sample {self.sample}" if self.level == "sample" else self.level

    def covers(self, other: "DecodeLevel") -> bool:
        if _DEPTH[self.level] != _DEPTH[other.level]:
            return _DEPTH[self.level] > _DEPTH[other.level]
        return self.level != "sample" or self.sample >= other.sample


def parse_decode(words: Sequence[str]) -> DecodeLevel:
    """``["all"]``, ``["none"]``, ``["sample", "N"]`` (or ``["sample"]``: 8 frames)."""
    words = list(words)
    if words and words[0] in ("all", "none") and len(words) == 1:
        return DecodeLevel(words[0])
    if words and words[0] == "sample" and len(words) <= 2:
        if len(words) == 1:
            return DecodeLevel("sample")
        try:
            n = int(words[1])
        except ValueError:
            n = 0
        if n >= 1:
            return DecodeLevel("sample", n)
    raise ConfigError(f"command line: --decode {' '.join(words)!r}; expected 'all', 'none' or 'sample N' (N >= 1)")


@dataclass
class Target:
    """One file or frame directory to check, and the list entries that name it."""

    path: str
    frame_dir: bool
    num_frames: Optional[int]
    backend: str
    frame_template: str
    entries: list[tuple[str, str]] = field(default_factory=list)  # (split label, video_id)


@dataclass
class SplitSummary:
    label: str  # "<dataset>/<split>"
    list_file: str
    records: int
    classes: int
    label_min: Optional[int]
    label_max: Optional[int]
    excluded: int = 0


# ---------------------------------------------------------------------------------- what to check
class Need(NamedTuple):
    """What the check reads: one split of one dataset. ``label`` names it in the report where one split is
    read from several lists (the K600 split lists); the report labels a split ``<dataset>/<label or split>``."""

    data: DataConfig
    split: str
    label: Optional[str] = None


def needs_of_spec(spec_path: str, scale: str, overrides: Sequence[str], results: Path, world: Any = None) -> list[Need]:
    """(data config, split) of every run of the spec at ``scale``: training runs read ``train`` (the
    ``tune`` split is held out of it), every run its evaluation split and its selection split; a run with
    ``eval.k600_split_lists`` each split list against its own class file (:func:`bike.protocols.k600_split_configs`),
    labelled ``<split>_k600_split<s>`` as its cache."""
    from bike.engine.caches import k600_split_cache_name
    from bike.protocols import k600_split_configs
    from harness.expand import expand
    from harness.spec import load_spec

    plan = expand(load_spec(spec_path, list(overrides)), scale, results, world=world)
    out: dict[tuple[str, str], Need] = {}
    for run in plan.runs:
        cfg = run.config
        if cfg.eval.protocol == "zero_shot_k600":  # first: the run's own list is usually split 1's
            for i, split_cfg in enumerate(k600_split_configs(cfg)):
                label = k600_split_cache_name(cfg.eval.split, i)
                out.setdefault((split_cfg.data.model_dump_json(), cfg.eval.split), Need(split_cfg.data, cfg.eval.split, label))
        splits = {cfg.eval.split}
        if run.kind == "train":
            splits.add("train")
            if cfg.train.select_on != "none":
                splits.add(cfg.train.select_on)
        for split in splits:
            split = "train" if split == "tune" else split
            out.setdefault((cfg.data.model_dump_json(), split), Need(cfg.data, split))
    return list(out.values())


def needs_of_args(fmt: str, root: str, lists: Sequence[str], class_file: str, dataset: str = "data",
                  frame_template: Optional[str] = None) -> list[Need]:
    """An explicit dataset: ``lists`` are ``SPLIT=FILE`` (or a bare FILE: ``val``)."""
    from pydantic import ValidationError

    from bike.config import format_validation_error

    kwargs: dict[str, Any] = {"dataset": dataset, "format": fmt, "root": root, "class_file": class_file}
    if frame_template:
        kwargs["frame_template"] = frame_template
    splits = []
    for item in lists:
        split, sep, path = item.partition("=")
        if not sep:
            split, path = "val", item
        if split not in ("train", "val", "test"):
            raise ConfigError(f"command line: --list {item!r}: split {split!r}; expected train=FILE, val=FILE or test=FILE")
        kwargs[f"{split}_list"] = path
        splits.append(split)
    if not splits:
        raise ConfigError("command line: no --list given; expected at least one --list [train=|val=|test=]FILE")
    try:
        data = DataConfig(**kwargs)
    except ValidationError as exc:
        raise ConfigError(format_validation_error("command line (--format/--root/--list/--class-file)", exc)) from None
    return [Need(data, s) for s in splits]


def _label_range(records) -> tuple[Optional[int], Optional[int]]:
    values: list[int] = []
    for r in records:
        values.extend(r.label if isinstance(r.label, tuple) else (r.label,))
    return (min(values), max(values)) if values else (None, None)


def gather(needs: Iterable[Need]) -> tuple[list[SplitSummary], list[Target]]:
    """Parse every list and class file; one :class:`Target` per distinct path. ``ListFormatError`` (bad
    input) becomes a ``ConfigError``."""
    from bike.data.lists import ListFormatError, apply_exclude_list, read_dataset

    summaries: list[SplitSummary] = []
    targets: dict[str, Target] = {}
    for data, split, named in needs:
        try:
            records, names = read_dataset(data, split)
            _, excluded = apply_exclude_list(records, data)
        except ListFormatError as exc:
            raise ConfigError(str(exc)) from None
        label = f"{data.dataset}/{named or split}"
        lo, hi = _label_range(records)
        summaries.append(SplitSummary(label, str(getattr(data, f"{split}_list")), len(records), len(names), lo, hi, len(excluded)))
        for r in records:
            frame_dir = data.format == "frame_dir" or r.num_frames is not None or os.path.isdir(r.path)
            t = targets.get(r.path)
            if t is None:
                t = targets[r.path] = Target(r.path, frame_dir, r.num_frames, data.decoder, data.frame_template)
            elif r.num_frames and (t.num_frames or 0) < r.num_frames:
                t.num_frames = r.num_frames
            t.entries.append((label, r.video_id))
    return summaries, list(targets.values())


# ---------------------------------------------------------------------------------- the cache
def _key_fields(t: Target) -> dict[str, Any]:
    return {"frame_dir": t.frame_dir, "num_frames": t.num_frames, "backend": t.backend, "template": t.frame_template}


class CheckCache:
    """``{path: {"fp": fingerprint, "decode": level, "sample": n, "key": ..., "problem": [reason, detail] | null}}``."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path is not None:
            from bike.rundir import read_json

            try:
                raw = read_json(self.path)
            except (OSError, ValueError):
                raw = None
            self.entries = dict((raw or {}).get("files", {})) if isinstance(raw, dict) else {}

    @property
    def fragment_dir(self) -> Optional[Path]:
        return None if self.path is None else self.path.with_name(self.path.name + ".d")

    def merge_fragments(self) -> int:
        """Fold the results tasks wrote to fragments (also those of an interrupted check) into the cache."""
        d = self.fragment_dir
        if d is None or not d.is_dir():
            return 0
        n = 0
        for frag in sorted(d.glob("*.json")):
            try:
                rows = json.loads(frag.read_text())
            except (OSError, ValueError):
                continue
            for row in rows:
                self.entries[row["path"]] = row["entry"]
                n += 1
        return n

    def clear_fragments(self) -> None:
        d = self.fragment_dir
        if d is not None and d.is_dir():
            for frag in d.glob("*.json"):
                frag.unlink(missing_ok=True)

    def lookup(self, t: Target, level: DecodeLevel, fp: Optional[list]) -> Optional[dict[str, Any]]:
        e = self.entries.get(t.path)
        if e is None or fp is None or e.get("fp") != fp or e.get("key") != _key_fields(t):
            return None
        done = DecodeLevel(e.get("decode", "none"), int(e.get("sample", 0) or 0))
        problem = e.get("problem")
        # a bad result holds at any depth; a clean one only at the depth it was checked
        return e if problem or done.covers(level) else None

    def save(self) -> None:
        if self.path is None:
            return
        from bike.rundir import atomic_write_json, file_lock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            atomic_write_json(self.path, {"version": 1, "files": self.entries})
        self.clear_fragments()


def _entry(t: Target, level: DecodeLevel, fp: Optional[list], problem) -> dict[str, Any]:
    return {"fp": fp, "decode": level.level, "sample": level.sample if level.level == "sample" else 0,
            "key": _key_fields(t), "problem": [problem.reason, problem.detail] if problem else None}


# ---------------------------------------------------------------------------------- the tasks
class CheckShard:
    """One task of the array: check ``targets`` one after another; results go to a fragment file of the
    cache as they come (so an interrupted check resumes) and are returned."""

    def __init__(self, targets: list[Target], level: DecodeLevel, fragment: Optional[str]) -> None:
        self.targets, self.level, self.fragment = targets, level, fragment

    def _flush(self, rows: list[dict[str, Any]]) -> None:
        if self.fragment:
            from bike.rundir import atomic_write_text

            Path(self.fragment).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(self.fragment), json.dumps(rows))

    def __call__(self) -> list[dict[str, Any]]:
        from bike.data.integrity import check_path, fingerprint

        rows: list[dict[str, Any]] = []
        for i, t in enumerate(self.targets, start=1):
            fp = fingerprint(t.path, t.frame_template)
            problem = check_path(t.path, t.frame_dir, t.num_frames, self.level.level, self.level.sample, t.backend,
                                 t.frame_template)
            rows.append({"path": t.path, "entry": _entry(t, self.level, fp, problem)})
            if i % FRAGMENT_EVERY == 0:
                self._flush(rows)
        self._flush(rows)
        return rows


def run_array(shards: list[CheckShard], executor: str, resources: Any, folder: Path, poll_s: float,
              log: Callable[[str], None]) -> list[list[dict[str, Any]]]:
    """Submit the shards as ONE submitit job array, wait, return each task's rows (a failed task: its
    fragment file, if it wrote one; the failure is reported)."""
    from harness.executor import executor_parameters, make_executor

    params = executor_parameters(executor, resources, "bikebench-datacheck")
    ex = make_executor(executor, folder / "%j", resources, params)
    with ex.batch():
        jobs = [ex.submit(s) for s in shards]
    log(f"data check: {len(shards)} task(s) submitted as one {executor} job array "
        f"({', '.join(str(j.job_id) for j in jobs)}); logs under {folder}")
    if executor != "debug":
        while not all(j.done() for j in jobs):
            time.sleep(poll_s)
    out: list[list[dict[str, Any]]] = []
    failures: list[str] = []
    for index, (job, shard) in enumerate(zip(jobs, shards)):
        try:
            out.append(job.result())
        except Exception as exc:  # noqa: BLE001 - a failed / killed task: keep what it wrote
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            failures.append(f"task {index} (job {job.job_id}): {last[:300]} (log: {job.paths.stderr})")
            try:
                out.append(json.loads(Path(shard.fragment).read_text()) if shard.fragment else [])
            except (OSError, ValueError):
                out.append([])
    for line in failures:
        log(f"data check: {line}")
    if failures:
        raise RuntimeError(f"data check: {len(failures)} of {len(shards)} task(s) failed; their finished files are "
                           "cached, re-run to check the rest:\n  " + "\n  ".join(failures))
    return out


# ---------------------------------------------------------------------------------- the check
@dataclass
class CheckReport:
    splits: list[SplitSummary]
    decode: str
    files: int
    checked: int
    cached: int
    bad: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "decode": self.decode, "files": self.files, "checked": self.checked,
                "cached": self.cached, "splits": [s.__dict__ for s in self.splits], "bad": self.bad}

    def table(self) -> str:
        lines = [f"{'split':<20} {'records':>8} {'classes':>8} {'labels':>10} {'excluded':>9}  list"]
        for s in self.splits:
            rng = "-" if s.label_min is None else f"{s.label_min}..{s.label_max}"
            lines.append(f"{s.label:<20} {s.records:>8} {s.classes:>8} {rng:>10} {s.excluded:>9}  {s.list_file}")
        lines.append(f"{self.files} file(s) at decode level '{self.decode}': {self.checked} checked now, "
                     f"{self.cached} unchanged since a cached check; {len(self.bad)} bad")
        if self.bad:
            width = max(len(b["reason"]) for b in self.bad)
            for b in self.bad:
                lines.append(f"  {b['reason']:<{width}}  {b['path']}: {b['detail']}")
        return "\n".join(lines)


def check(
    needs: Sequence[Need],
    level: DecodeLevel = DecodeLevel("none"),
    cache_file: Optional[Path] = None,
    executor: str = "local",
    tasks: int = 1,
    resources: Any = None,
    folder: Optional[Path] = None,
    recheck: bool = False,
    poll_s: float = 0.5,
    log: Callable[[str], None] = print,
) -> CheckReport:
    """Parse the lists, check the files not covered by the cache in ``tasks`` parallel tasks, merge."""
    from bike.data.integrity import fingerprint
    from harness.spec import ResourceSpec

    summaries, targets = gather(needs)
    cache = CheckCache(cache_file)
    cache.merge_fragments()
    todo: list[Target] = []
    cached = 0
    for t in targets:
        hit = None if recheck else cache.lookup(t, level, fingerprint(t.path, t.frame_template))
        if hit is None:
            todo.append(t)
        else:
            cached += 1
    if todo:
        n = max(1, min(tasks, len(todo)))
        frag_dir = cache.fragment_dir
        token = f"{os.getpid()}-{secrets.token_hex(3)}"
        shards = [CheckShard(todo[i::n], level, str(frag_dir / f"{token}-{i}.json") if frag_dir else None) for i in range(n)]
        if executor == "inline":  # in this process, no submitit (library callers, small lists)
            results = [s() for s in shards]
        else:
            res = resources or ResourceSpec(timeout_min=DEFAULT_TIMEOUT_MIN)
            if res.timeout_min is None:
                res = res.merged(ResourceSpec(timeout_min=DEFAULT_TIMEOUT_MIN))
            from harness.executor import invocation_folder

            base = folder or (cache_file.parent if cache_file else Path.cwd())
            results = run_array(shards, executor, res, invocation_folder(base), poll_s, log)
        for rows in results:
            for row in rows:
                cache.entries[row["path"]] = row["entry"]
        cache.save()
    bad = []
    for t in targets:
        e = cache.entries.get(t.path) or {}
        if e.get("problem"):
            reason, detail = e["problem"]
            bad.append({"path": t.path, "reason": reason, "detail": detail,
                        "entries": [{"split": s, "video_id": v} for s, v in t.entries]})
    bad.sort(key=lambda b: b["path"])
    return CheckReport(summaries, level.label, len(targets), len(todo), cached, bad)


def write_exclude_list(report: CheckReport, path: Path) -> int:
    """The bad entries as an exclusion list (``data.exclude_list``); returns the number of entries."""
    from bike.rundir import atomic_write_text

    lines = [f"# bikebench data check ({report.decode}): {len(report.bad)} bad file(s) of {report.files}, "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}",
             "# name this file in a spec as data.exclude_list; the run logs how many entries it excluded"]
    seen: set[str] = set()
    for b in report.bad:
        for e in b["entries"]:
            vid = e["video_id"].split("#t=")[0]
            if vid not in seen:
                seen.add(vid)
                lines.append(f"{vid}  # {b['reason']}: {b['detail']}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return len(seen)
