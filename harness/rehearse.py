"""Rehearsal: the full-scale plan executed for real, on this machine's CPU, against synthetic data.

``bikebench rehearse SPEC... --scale full`` (and ``bikebench rehearse table6|paper``) resolves the specs at
full scale exactly as a real run would (recipe, frames, resolution, backbones, views, protocols, the
``init_from`` chains), then :func:`rehearsal_plan` rewrites only what cannot run here, and says so per run:

* ``dataset.*`` paths -> a synthetic mirror of the dataset under ``<results>/rehearsal/data/<dataset>/``
  in the real layout (:class:`Mirror`): the released list formats and file names, every class of the real
  class file (the real names when the class file or the shipped lexicon has them, else synthetic names of
  the real count), a few tiny videos (or frame folders) per class (the K600 zero-shot split lists
  ``eval.k600_split_lists``: three ``test_split<s>_exist.txt``, each labelled by its own 160-class
  ``k160_labels_split<s>.csv``); ``data.expected_lines`` keeps its class count and drops the list lengths;
  ``data.exclude_list`` -> a file that leaves all but a few videos of each list out (a few-shot run keeps its
  whole training list: it needs K videos of every class);
* ``pretrained`` weights (model, attribute generator, attribute text encoder) that are absent here (a file
  that does not exist, an open_clip tag not in the local cache) -> random weights; a released checkpoint
  ``init_from`` that is absent -> none (the backbone's random weights are evaluated);
* ``train.max_steps`` -> a few steps (default 2), ``train.batch_size`` capped (default 2), ``train.log_every``
  1, ``eval.batch_size`` 1, ``data.num_workers`` at most 1; activation checkpointing where one training
  step's activations would not fit in memory here; ``train.epochs`` and the schedule are unchanged;
* resources -> one CPU job (no GPU, the spec's time limit replaced by the rehearsal's).

Execution is the real one (:func:`harness.drive.run_specs`: the executor the user names, dependencies,
MLflow to a scratch store ``<results>/rehearsal/mlflow.db``, the table rendering), with the jobs wrapped
(:func:`train_job`, :func:`evaluate_job`): a training run stops after its first optimiser step as on a
preemption (``checkpoints/latest.pt`` written), is run again and must resume from that step; each job
records its wall time, step times and peak memory in ``<run>/rehearsal.json``. :func:`write_report`
writes ``<results>/rehearsal/rehearsal.json`` and ``rehearsal.md``. docs/rehearse.md has the details.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from bike.config import ConfigError, RunConfig
from harness.expand import Plan, PlannedRun, NotRunCell
from harness.rundir import RunDir, runs_root
from harness.spec import ResourceSpec

#: Sub-directory of ``--results`` everything of a rehearsal goes to (runs, mirror, MLflow store, report).
REHEARSAL_DIR = "rehearsal"
#: The report files in the rehearsal directory.
REPORT_JSON = "rehearsal.json"
REPORT_MARKDOWN = "rehearsal.md"
#: What each rehearsed job writes into its run directory.
RUN_RECORD = "rehearsal.json"
#: Classes of the datasets' real class files (used when the spec gives no ``expected_lines.classes``).
REAL_CLASS_COUNTS = {"k400": 400, "k600": 600, "anet": 200, "charades": 157, "ucf101": 101, "hmdb51": 51}
#: Kinetics-600 zero-shot: the classes new to K600 (220) and the size of each released split (160 of them).
K600_NEW_CLASSES = 220
K600_SPLIT_SIZE = 160
#: Frames of every synthetic video / frame folder (the longest clip of the shipped specs is 32 frames).
MIRROR_FRAMES = 32
MIRROR_FPS = 8
MIRROR_SIZE = 16  # pixels: the transforms resize to the run's real resolution
#: Above this estimate of one training step's activations (bytes), the rehearsal turns on activation checkpointing.
ACTIVATION_LIMIT_BYTES = 8 * 2**30
_WIDTHS = {"B": (768, 12), "L": (1024, 24), "H": (1280, 32), "g": (1408, 40)}  # ViT width, layers


class RehearsalError(ConfigError):
    """A rehearsal that cannot be set up (the message names the spec field and value)."""


@dataclass(frozen=True)
class RehearsalOptions:
    """How far a rehearsal cuts each run (see the module docstring)."""

    steps: int = 2
    batch: int = 2
    train_videos: int = 4
    val_videos: int = 2
    per_class: int = 2
    num_workers: int = 1
    timeout_min: float = 120.0
    cluster: str = "local"
    backbones: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise RehearsalError(f"--steps {self.steps}: expected >= 2 (one step, the simulated preemption, then the rest)")
        for name in ("batch", "train_videos", "val_videos", "per_class"):
            if getattr(self, name) < 1:
                raise RehearsalError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")


def rehearsal_root(results: str | Path) -> Path:
    return Path(results).resolve() / REHEARSAL_DIR


# --------------------------------------------------------------------------------------- the mirror
def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return
    from bike.rundir import atomic_write_text

    atomic_write_text(path, text)


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass
class MirrorList:
    """One list the mirror wrote: its path and the entries an exclusion list can name, in list order."""

    path: str
    keys: list[str]
    #: the label of each entry (same order as ``keys``); empty where not recorded
    labels: list[Any] = field(default_factory=list)


class Mirror:
    """Synthetic datasets in the real layout under ``root`` (``<results>/rehearsal/data``); idempotent."""

    def __init__(self, root: Path, per_class: int = 2):
        self.root = Path(root)
        self.per_class = per_class
        self._media: dict[str, Path] = {}

    # -------------------------------------------------------------- media
    def _video(self) -> Path:
        if "video" not in self._media:
            import numpy as np

            from bike.data.video_io import write_mp4

            path = self.root / ".media" / f"video_{MIRROR_FRAMES}f_{MIRROR_SIZE}px.mp4"
            if not path.is_file():
                rng = np.random.default_rng(0)
                frames = rng.integers(0, 256, (MIRROR_FRAMES, MIRROR_SIZE, MIRROR_SIZE, 3), dtype=np.uint8)
                write_mp4(path, frames, fps=MIRROR_FPS)
            self._media["video"] = path
        return self._media["video"]

    def _image(self) -> Path:
        if "image" not in self._media:
            import numpy as np
            from PIL import Image

            path = self.root / ".media" / f"frame_{MIRROR_SIZE}px.jpg"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(1)
                Image.fromarray(rng.integers(0, 256, (MIRROR_SIZE, MIRROR_SIZE, 3), dtype=np.uint8)).save(path)
            self._media["image"] = path
        return self._media["image"]

    def video_file(self, path: Path) -> None:
        _link(self._video(), path)

    def frame_dir(self, path: Path, template: str, n: int = MIRROR_FRAMES) -> None:
        if path.is_dir() and (path / template.format(n)).exists():
            return
        image = self._image()
        for i in range(1, n + 1):
            _link(image, path / template.format(i))

    # -------------------------------------------------------------- paths
    def mapping(self, config: RunConfig) -> tuple[Callable[[str], str], Path]:
        """(real path -> mirror path, the dataset's mirror directory): paths keep their layout below the
        deepest directory holding every dataset path of the run."""
        d = config.data
        k600_files = (*(config.eval.k600_split_lists or []), *config.eval.k600_split_files)
        paths = [p for p in (d.root, d.train_root, d.val_root, d.train_list, d.val_list, d.test_list, d.class_file,
                             *k600_files) if p]
        if not paths:
            raise RehearsalError(f"{config.name}: dataset has no paths (dataset.root, lists, class_file); nothing to mirror")
        absolute = [os.path.abspath(os.path.expanduser(p)) for p in paths]
        files = {os.path.abspath(os.path.expanduser(p)) for p in (d.train_list, d.val_list, d.test_list, d.class_file,
                                                                   *k600_files) if p}
        base = os.path.commonpath(absolute)
        if base in files:
            base = os.path.dirname(base)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", d.dataset) or "dataset"
        top = self.root / name

        def to_mirror(p: Optional[str]) -> Optional[str]:
            if not p:
                return p
            rel = os.path.relpath(os.path.abspath(os.path.expanduser(p)), base)
            return str(top if rel == "." else top / rel)

        return to_mirror, top

    # -------------------------------------------------------------- classes
    @staticmethod
    def class_count(config: RunConfig) -> int:
        d = config.data
        split_file = bool(config.eval.k600_split_lists) and d.class_file in config.eval.k600_split_files
        count = d.expected_lines.get("classes") or (K600_SPLIT_SIZE if split_file else REAL_CLASS_COUNTS.get(d.dataset))
        if not count:
            raise RehearsalError(
                f"{config.name}: dataset.name {d.dataset!r}: the rehearsal does not know its number of classes; "
                f"set dataset.expected_lines.classes (known: {', '.join(f'{k} {v}' for k, v in REAL_CLASS_COUNTS.items())})")
        return int(count)

    @staticmethod
    def class_names(config: RunConfig, count: int) -> tuple[list[str], str]:
        """The real class names when the real class file (or the shipped K400 lexicon) has them."""
        from bike.data.lists import ListFormatError, read_classes

        d = config.data
        if d.class_file and Path(d.class_file).is_file():
            try:
                names = read_classes(d.model_copy(update={"expected_lines": {}}))
                if len(names) == count:
                    return names, f"the real class names ({d.class_file})"
            except ListFormatError:
                pass
        if d.dataset == "k400":
            from bike.text import lexicon_path

            names = [ln.strip() for ln in Path(lexicon_path("k400")).read_text().splitlines() if ln.strip()]
            if len(names) == count:
                return names, "the real K400 class names (bike/lexicons/k400.txt)"
        return [f"{d.dataset} action {i:03d}" for i in range(count)], f"{count} synthetic class names"

    # -------------------------------------------------------------- lists
    def build(self, config: RunConfig) -> dict[str, Any]:
        """Write the run's mirror (class file, lists, videos / frame folders, K600 splits) and return the
        rewritten ``data`` / ``eval`` fields plus ``lists`` ({split: MirrorList}) and ``classes_from``."""
        d = config.data
        to_mirror, top = self.mapping(config)
        k = self.class_count(config)
        names, classes_from = self.class_names(config, k)
        new: dict[str, Any] = {f: to_mirror(getattr(d, f)) for f in
                               ("root", "train_root", "val_root", "train_list", "val_list", "test_list", "class_file")}
        mirrored = d.model_copy(update={f: v for f, v in new.items()})
        class_file = Path(new["class_file"]) if new["class_file"] else top / "classes.csv"
        new["class_file"] = str(class_file)
        split_lists = list(config.eval.k600_split_lists or [])
        # the released K600 protocol: the split lists and their class files, written below (the run's own list
        # and class file are usually split 1's)
        written_by_splits = {to_mirror(p) for p in (*split_lists, *config.eval.k600_split_files)} if split_lists else set()
        if str(class_file) not in written_by_splits:
            if d.format == "charades":
                _write_if_changed(class_file, "".join(f"c{i:03d} {n}\n" for i, n in enumerate(names)))
            else:
                _write_if_changed(class_file, "id,name\n" + "".join(f"{i},{_csv(n)}\n" for i, n in enumerate(names)))
        per_class = max(self.per_class, config.train.few_shot or 0)
        lists: dict[str, MirrorList] = {}
        k600 = config.eval.protocol == "zero_shot_k600" and not split_lists
        for split in ("train", "val", "test"):
            list_file = new[f"{split}_list"]
            if not list_file or list_file in written_by_splits:
                continue
            root = Path(mirrored.root_for(split))
            labels = self._labels(k, split, per_class, multi=d.multi_label, k600=k600)
            lists[split] = self._write_list(Path(list_file), root, d, split, labels)
        out: dict[str, Any] = {"data": new, "lists": lists, "classes_from": classes_from, "classes": k}
        if split_lists:
            out.update(self._k600_split_lists(config, to_mirror, Path(mirrored.root_for(config.eval.split)), lists))
            out["classes_from"] = out.pop("k600_classes_from")
        elif config.eval.k600_split_files:
            new_classes = list(range(k - min(K600_NEW_CLASSES, k), k))
            files = []
            for i, f in enumerate(config.eval.k600_split_files):
                chosen = _k600_split(new_classes, i)
                path = Path(to_mirror(f))
                _write_if_changed(path, "id,name\n" + "".join(f"{j},{_csv(names[c])}\n" for j, c in enumerate(chosen)))
                files.append(str(path))
            out["k600_split_files"] = files
        return out

    def _k600_split_lists(self, config: RunConfig, to_mirror: Callable[[str], str], root: Path,
                          lists: dict[str, MirrorList]) -> dict[str, Any]:
        """The released Kinetics-600 zero-shot layout (``eval.k600_split_lists``): split s's class file
        ``k160_labels_split<s>.csv`` (160 of the 220 new classes, ``id,name``) and its video list
        ``test_split<s>_exist.txt`` (``<video>.mp4 <label>``, labels 0..159 of that class file; a video of a
        class in several splits is in each list, under the same name), ``per_class`` videos a class, the
        classes of every split first. Adds the lists to ``lists`` (keyed as their caches) and returns the
        rewritten ``k600_split_lists`` / ``k600_split_files``."""
        d = config.data
        if d.format != "video_list":
            raise RehearsalError(f"{config.name}: dataset.format {d.format!r} with eval.k600_split_lists: the rehearsal "
                                 "mirror writes the released K600 split lists as video lists (expected video_list)")
        from bike.engine.caches import k600_split_cache_name

        new = list(range(K600_NEW_CLASSES))
        names = [f"{d.dataset} new action {c:03d}" for c in new]
        count = len(config.eval.k600_split_lists or [])
        common = [c for c in new if all(c in _k600_split(new, i) for i in range(count))]
        split_lists, split_files = [], []
        for i, (list_file, class_file) in enumerate(zip(config.eval.k600_split_lists or [], config.eval.k600_split_files)):
            chosen = _k600_split(new, i)
            label = {c: j for j, c in enumerate(chosen)}
            files_path, list_path = Path(to_mirror(class_file)), Path(to_mirror(list_file))
            _write_if_changed(files_path, "id,name\n" + "".join(f"{j},{_csv(names[c])}\n" for j, c in enumerate(chosen)))
            lines, keys = [], []
            for c in [c for c in common if c in label] + [c for c in chosen if c not in common]:
                for j in range(self.per_class):
                    rel = f"te{c:03d}x{j}.mp4"
                    self.video_file(root / rel)
                    lines.append(f"{rel} {label[c]}")
                    keys.append(rel)
            _write_if_changed(list_path, "\n".join(lines) + "\n")
            lists[k600_split_cache_name(config.eval.split, i)] = MirrorList(str(list_path), keys)
            split_lists.append(str(list_path))
            split_files.append(str(files_path))
        return {"k600_split_lists": split_lists, "k600_split_files": split_files,
                "k600_classes_from": f"{len(new)} synthetic K600 class names, {K600_SPLIT_SIZE} per split file"}

    @staticmethod
    def _labels(k: int, split: str, per_class: int, multi: bool, k600: bool) -> list[Any]:
        if split == "train":
            return [c for c in range(k) for _ in range(per_class)]
        if k600:  # the new classes, those in every split first (the few evaluated videos then count in each)
            new = list(range(k - min(K600_NEW_CLASSES, k), k))
            common = [c for c in new if all(c in _k600_split(new, i) for i in range(3))]
            return common + [c for c in new if c not in common]
        if multi:
            return [(c, (c + k // 2) % k) for c in range(k)]
        return list(range(k))

    def _write_list(self, path: Path, root: Path, d: Any, split: str, labels: list[Any]) -> MirrorList:
        fmt = d.format
        lines: list[str] = []
        keys: list[str] = []
        seen: dict[Any, int] = {}
        tag = "tr" if split == "train" else split[:2]
        for label in labels:
            first = label[0] if isinstance(label, tuple) else label
            j = seen[first] = seen.get(first, -1) + 1
            stem = f"{tag}{first:03d}x{j}"
            if fmt == "video_list":
                rel = f"{stem}.mp4"
                self.video_file(root / rel)
                lines.append(f"{rel} {_label_text(label)}")
                keys.append(rel)
            elif fmt == "frame_dir" or (fmt == "activitynet"):
                rel = f"{stem}" if fmt == "activitynet" else f"c{first:03d}/{stem}"
                self.frame_dir(root / rel, d.frame_template)
                lines.append(f"{rel} {MIRROR_FRAMES} {_label_text(label)}")
                keys.append(rel)
            elif fmt == "charades":
                vid = stem.upper()
                self.video_file(root / f"{vid}.mp4")
                keys.append(f"{vid}.mp4")
                seconds = MIRROR_FRAMES / MIRROR_FPS
                if split == "train":
                    lines.append(f"{vid},c{first:03d},0.50,{seconds - 1:.2f},{seconds:.2f}")
                else:
                    actions = ";".join(f"c{c:03d} 0.00 {seconds - 0.5:.2f}" for c in (label if isinstance(label, tuple) else (label,)))
                    lines.append(f"{vid},SUBJ,Kitchen,6,7,Yes,a synthetic video,cup,a synthetic video,{actions},{seconds:.2f}")
            else:
                raise RehearsalError(f"dataset.format {fmt!r}: the rehearsal mirror cannot write it")
        if fmt == "charades":
            header = ("video_id,label,start_time,end_time,total_time" if split == "train" else
                      "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length")
            text = header + "\n" + "\n".join(lines) + "\n"
        else:
            text = "\n".join(lines) + "\n"
        _write_if_changed(path, text)
        return MirrorList(str(path), keys, list(labels))


def _csv(name: str) -> str:
    return f'"{name}"' if "," in name or '"' in name else name


def _label_text(label: Any) -> str:
    return ",".join(str(c) for c in label) if isinstance(label, tuple) else str(label)


def _k600_split(new_classes: list[int], i: int) -> list[int]:
    """Split ``i`` of the synthetic K600 zero-shot splits: 160 of the new classes, shifted per split."""
    size = min(K600_SPLIT_SIZE, len(new_classes))
    shift = min(i * 30, len(new_classes) - size)
    return new_classes[shift:shift + size]


def _spread(keys: Sequence[str], n: int) -> list[str]:
    """``n`` entries spread evenly over the list (lists are written class by class)."""
    if n >= len(keys):
        return list(keys)
    step = len(keys) / n
    return [keys[int(i * step)] for i in range(n)]


def _cover_class_splits(ml: MirrorList, keep: Sequence[str], splits: Sequence[Any]) -> list[str]:
    """``keep`` plus as few entries of ``ml`` as a greedy cover needs so that every class split (an array of
    class indices) has a kept video of one of its classes: the half-class protocol evaluates each split on
    the videos of its classes and refuses a split without any."""
    first_key: dict[Any, str] = {}
    for key, label in zip(ml.keys, ml.labels):
        first_key.setdefault(label, key)
    label_of = dict(zip(ml.keys, ml.labels))
    have = {label_of[k] for k in keep if k in label_of}
    uncovered = [set(int(c) for c in split) for split in splits]
    uncovered = [u for u in uncovered if not u & have]
    chosen = set(keep)
    while uncovered:
        counts: dict[int, int] = {}
        for u in uncovered:
            for c in u:
                if c in first_key:
                    counts[c] = counts.get(c, 0) + 1
        if not counts:
            break  # a split none of whose classes has a video: the engine names it
        best = max(sorted(counts), key=lambda c: counts[c])
        chosen.add(first_key[best])
        uncovered = [u for u in uncovered if best not in u]
    return [k for k in ml.keys if k in chosen]


def _evaluation_keys(ml: MirrorList, cfg: RunConfig, n: int, num_classes: int) -> list[str]:
    """The entries of an evaluation list a rehearsal keeps: ``n`` spread over the list; the K600 split lists'
    first ``n`` (the videos every split list shares); for the half-class protocol also a video of some class
    of every split."""
    if cfg.eval.protocol == "zero_shot_k600":
        return ml.keys[:n]
    keep = _spread(ml.keys, n)
    if cfg.eval.protocol == "zero_shot_half" and ml.labels:
        from bike.protocols import half_class_splits

        keep = _cover_class_splits(ml, keep, half_class_splits(num_classes, cfg.eval.zero_shot_splits))
    return keep


# --------------------------------------------------------------------------------------- weights
def weights_present(backbone: str, pretrained: Optional[str]) -> bool:
    """Whether ``pretrained`` can be loaded here without a network: a file that exists, or an open_clip
    tag whose weights are in the local cache."""
    if pretrained is None:
        return True
    from harness.preflight import _is_weight_path

    if _is_weight_path(pretrained):
        return Path(pretrained).expanduser().is_file()
    try:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(backbone.replace("/", "-"), pretrained) or {}
        hub = cfg.get("hf_hub")
        if hub:
            from huggingface_hub import try_to_load_from_cache

            repo, filename = os.path.split(hub)
            for name in ([filename] if filename else ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"]):
                if isinstance(try_to_load_from_cache(repo, name), str):
                    return True
        url = cfg.get("url")
        if url:
            return (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()
    except Exception:  # noqa: BLE001 - anything unknown counts as absent
        return False
    return False


def activation_bytes(config: RunConfig, batch: int) -> float:
    """A rough estimate of one training step's saved activations (fp32): frames x tokens x width x layers."""
    m = re.match(r"ViT-([BLHg])-(\d+)", config.model.backbone)
    if not m:
        return 0.0
    width, layers = _WIDTHS[m.group(1)]
    tokens = (config.model.resolution // int(m.group(2))) ** 2 + 1
    return float(batch * config.model.frames * tokens * width * layers * 4 * 40)


# --------------------------------------------------------------------------------------- the plan
@dataclass
class RunNotes:
    """What the rehearsal changed for one run, and why."""

    run_id: str
    real_run_id: str
    changes: list[str] = field(default_factory=list)
    exercised: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rehearsal:
    """A plan rewriter for :func:`harness.drive.run_specs` (``rewrite=``) that keeps what it did."""

    results: Path
    options: RehearsalOptions = field(default_factory=RehearsalOptions)
    notes: dict[str, RunNotes] = field(default_factory=dict)
    plan: Optional[Plan] = None
    started: float = field(default_factory=time.time)

    @property
    def root(self) -> Path:
        return self.results

    def __call__(self, plan: Plan) -> Plan:
        self.plan = rehearsal_plan(plan, self.options, self.notes)
        from harness.preflight import preflight

        # the jobs are wrapped (harness.rehearse:train_job / evaluate_job): the driver's pre-flight skips a
        # stand-in engine, so the rewritten plan is checked here as the real engine's
        preflight(self.plan, self.options.cluster)
        return self.plan

    @property
    def job_targets(self) -> dict[str, str]:
        return dict(JOB_TARGETS)


JOB_TARGETS = {"train": "harness.rehearse:train_job", "evaluate": "harness.rehearse:evaluate_job"}


def _filter_backbones(plan: Plan, backbones: Sequence[str]) -> Plan:
    if not backbones:
        return plan
    wanted = {b.replace("/", "-") for b in backbones}
    keep: set[str] = set()

    def add(run_id: str) -> None:
        if run_id not in keep:
            keep.add(run_id)
            for dep in plan.by_id[run_id].dependencies:
                add(dep)

    for run in plan.runs:
        if run.config.model.backbone.replace("/", "-") in wanted:
            add(run.run_id)
    if not keep:
        found = sorted({r.config.model.backbone for r in plan.runs})
        raise RehearsalError(f"--backbone {', '.join(backbones)}: no run of the plan uses it; backbones: {', '.join(found)}")
    not_run = list(plan.not_run)
    for run in plan.runs:
        if run.run_id not in keep:
            for c in run.cells:
                not_run.append(NotRunCell(c.table, c.row, c.column, c.spec, c.variant,
                                          f"not rehearsed (--backbone {', '.join(backbones)})"))
    return Plan(plan.scale, plan.results, [r for r in plan.runs if r.run_id in keep], not_run, plan.specs)


def rehearsal_plan(plan: Plan, options: RehearsalOptions, notes: Optional[dict[str, RunNotes]] = None) -> Plan:
    """The plan a rehearsal runs: every run rewritten (see the module docstring), run ids recomputed and
    the dependencies (``init_from`` run directories) pointed at the rewritten runs."""
    notes = notes if notes is not None else {}
    plan = _filter_backbones(plan, options.backbones)
    root = Path(plan.results)
    per_class = max([options.per_class] + [r.config.train.few_shot or 0 for r in plan.runs])
    mirror = Mirror(root / "data", per_class=per_class)
    moved: dict[str, str] = {}  # real run id -> rehearsal run id
    runs: dict[str, PlannedRun] = {}
    for run in plan.runs:
        config, changes, settings = rewrite_config(run, options, mirror, moved, root)
        new_id = config.content_hash()
        moved[run.run_id] = new_id
        resources = ResourceSpec.model_validate({
            "timeout_min": options.timeout_min, "max_num_timeout": 0,
            "slurm": {"cpus_per_task": os.cpu_count() or 1} if options.cluster == "slurm" else {}})
        changes.append(f"resources: one CPU job, {options.timeout_min:g} min, no requeue (spec: "
                       f"{_resources_text(run.resources)})")
        if new_id in runs:
            existing = runs[new_id]
            for spec, variant in run.requested_by:
                existing = existing.with_request(run.cells, spec, variant)
            runs[new_id] = existing
            continue
        runs[new_id] = replace(run, run_id=new_id, config=config, run_dir=runs_root(root) / new_id,
                               dependencies=tuple(moved[d] for d in run.dependencies), resources=resources)
        notes[new_id] = RunNotes(new_id, run.run_id, changes, exercised_of(config, run.kind), settings)
    return Plan(plan.scale, plan.results, list(runs.values()), plan.not_run, plan.specs)


def _resources_text(res: ResourceSpec) -> str:
    s = res.slurm
    parts = [f"{res.timeout_min:g} min" if res.timeout_min else "default time"]
    if s.gpus_per_node:
        parts.append(f"{s.nodes or 1}x{s.gpus_per_node} GPU")
    if s.mem:
        parts.append(f"mem {s.mem}")
    return ", ".join(parts)


def rewrite_config(run: PlannedRun, options: RehearsalOptions, mirror: Mirror, moved: Mapping[str, str],
                   root: Path) -> tuple[RunConfig, list[str], dict[str, Any]]:
    """The rehearsal's config of ``run`` and the list of what changed."""
    cfg = run.config
    data = cfg.model_dump(mode="json")
    changes: list[str] = []
    built = mirror.build(cfg)
    d = data["data"]
    for key, value in built["data"].items():
        d[key] = value
    changes.append(f"dataset {cfg.data.dataset} ({cfg.data.format}): synthetic mirror {Path(built['data']['class_file']).parent} "
                   f"with {built['classes']} classes ({built['classes_from']})")
    if "k600_split_files" in built:
        data["eval"]["k600_split_files"] = built["k600_split_files"]
    if "k600_split_lists" in built:
        data["eval"]["k600_split_lists"] = built["k600_split_lists"]
    expected = {k: v for k, v in cfg.data.expected_lines.items() if k == "classes"}
    if expected != cfg.data.expected_lines:
        changes.append(f"data.expected_lines: {dict(cfg.data.expected_lines)} -> {expected} (the mirror's lists are short)")
    d["expected_lines"] = expected
    reads_train = run.kind == "train"
    listed: list[str] = []
    chosen: set[str] = set()
    kept: dict[str, int] = {}
    for split, ml in built["lists"].items():
        if split == "train":
            if not reads_train:
                continue
            if cfg.train.few_shot:
                kept[split] = len(ml.keys)
                chosen.update(ml.keys)
                continue  # K videos of every class are needed
            keep = _spread(ml.keys, options.train_videos)
        else:
            keep = _evaluation_keys(ml, cfg, options.val_videos, built["classes"])
        kept[split] = len(keep)
        chosen.update(keep)
        listed += ml.keys
    # an entry kept in one list is kept in every list naming it (the K600 split lists share their videos)
    excluded = [k for k in dict.fromkeys(listed) if k not in chosen]
    if cfg.data.exclude_list:
        changes.append(f"data.exclude_list {cfg.data.exclude_list} replaced (it names the real lists' entries)")
    exclude = Path(built["data"]["class_file"]).parent / f"rehearsal_exclude_{_digest(sorted(excluded))}.txt"
    _write_if_changed(exclude, "# bikebench rehearse: every entry of the mirror's lists but a few\n" + "".join(f"{e}\n" for e in excluded))
    d["exclude_list"] = str(exclude)
    changes.append("lists cut to " + ", ".join(f"{s} {n}" for s, n in kept.items()) + " video(s) by data.exclude_list"
                   + (" (few-shot: the whole training list)" if cfg.train.few_shot and reads_train else ""))
    if cfg.data.num_workers > options.num_workers:
        d["num_workers"] = options.num_workers
        changes.append(f"data.num_workers {cfg.data.num_workers} -> {options.num_workers}")
    # weights
    m, a = data["model"], data["attributes"]
    for where, section, key, backbone in (("model.pretrained", m, "pretrained", cfg.model.backbone),
                                          ("attributes.generator_pretrained", a, "generator_pretrained", cfg.attributes.generator_backbone or cfg.model.backbone),
                                          ("attributes.text_encoder_pretrained", a, "text_encoder_pretrained", cfg.attributes.text_encoder)):
        value = section.get(key)
        if value is not None and not weights_present(backbone, value):
            section[key] = None
            changes.append(f"{where} {value!r} ({backbone}) absent here -> random weights")
    if cfg.attributes.enabled and cfg.attributes.shares_text_tower(cfg.model) != RunConfig.model_validate(data).attributes.shares_text_tower(
            RunConfig.model_validate(data).model):
        changes.append("attributes: the text encoder's sharing of the run's text tower differs from the real run's (random weights on both)")
    # init_from
    if cfg.init_from:
        src = Path(cfg.init_from)
        if src.parent == runs_root(root) and src.name in moved:
            data["init_from"] = str(runs_root(root) / moved[src.name])
        elif not src.exists():
            data["init_from"] = None
            changes.append(f"init_from {cfg.init_from} absent here (a released checkpoint) -> none: the backbone's random weights are evaluated")
    # recipe
    t, e = data["train"], data["eval"]
    if run.kind == "train":
        t["max_steps"] = options.steps if cfg.train.max_steps is None else min(cfg.train.max_steps, options.steps)
        changes.append(f"train.max_steps {cfg.train.max_steps} -> {t['max_steps']} (train.epochs {cfg.train.epochs:g} and its schedule kept)")
        if cfg.train.batch_size > options.batch:
            t["batch_size"] = options.batch
            changes.append(f"train.batch_size {cfg.train.batch_size} -> {options.batch}")
        if t["batch_size"] % cfg.train.grad_accum:
            t["grad_accum"] = 1
            changes.append(f"train.grad_accum {cfg.train.grad_accum} -> 1")
        t["log_every"] = 1
        est = activation_bytes(cfg, t["batch_size"])
        if est > ACTIVATION_LIMIT_BYTES and not cfg.model.activation_checkpointing:
            m["activation_checkpointing"] = True
            changes.append(f"model.activation_checkpointing on (a step's activations ~{est / 2**30:.0f} GiB)")
    if cfg.eval.batch_size > 1:
        e["batch_size"] = 1
        changes.append(f"eval.batch_size {cfg.eval.batch_size} -> 1")
    new = RunConfig.model_validate(data)
    settings = {"backbone": new.model.backbone, "frames": new.model.frames, "resolution": new.model.resolution,
                "views": f"{new.eval.clips}x{new.eval.crops}", "protocol": new.eval.protocol, "stage": new.stage,
                "batch": new.train.batch_size if run.kind == "train" else None,
                "real_batch": cfg.train.batch_size if run.kind == "train" else None,
                "lr_clip": new.train.lr_clip, "lr_new": new.train.lr_new, "epochs": new.train.epochs,
                "attributes": new.attributes.enabled}
    return new, changes, settings


def exercised_of(config: RunConfig, kind: str) -> list[str]:
    out = []
    if kind == "train":
        out.append(f"{config.train.max_steps} optimiser step(s) of stage {config.stage}, a preemption after step 1 "
                   "(latest.pt) and the resume")
        if config.train.select_on != "none":
            out.append(f"per-epoch validation on {config.train.select_on} (best.pt)")
    if config.attributes.enabled:
        out.append("attribute generation (" + ", ".join(x for x in config.attributes.generator(config.model) if x) + ")")
    out.append(f"evaluation {config.eval.protocol} with {config.eval.clips}x{config.eval.crops} views")
    return out


# --------------------------------------------------------------------------------------- the jobs
def _peak_mb() -> dict[str, float]:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"peak_rss_mb": round(own, 1), "peak_rss_children_mb": round(children, 1)}


def _step_seconds(run_dir: Path) -> list[float]:
    out = []
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            sps = rec.get("steps_per_s") if isinstance(rec, dict) else None
            if rec.get("kind") == "train" and isinstance(sps, (int, float)) and sps > 0:
                out.append(round(1.0 / sps, 3))
    return out


def _parameters(run_dir: Path, config: RunConfig) -> Optional[int]:
    """Parameters of the model a run trained (its checkpoint) or evaluates (its init_from run's)."""
    from bike.rundir import run_checkpoint

    candidates = [Path(run_dir)] + ([Path(config.init_from)] if config.init_from else [])
    for c in candidates:
        try:
            ckpt = run_checkpoint(c) if c.is_dir() else c
        except Exception:  # noqa: BLE001
            continue
        if ckpt is None or not Path(ckpt).is_file():
            continue
        import torch

        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        model = state.get("model") if isinstance(state, dict) else None
        if isinstance(model, dict):
            return int(sum(v.numel() for v in model.values() if hasattr(v, "numel")))
    return None


def _record(run_dir: Path, record: dict[str, Any]) -> None:
    from bike.rundir import atomic_write_json

    atomic_write_json(Path(run_dir) / RUN_RECORD, record)


_RESUMED = re.compile(r"resumed from .*latest\.pt at epoch (\d+), batch (\d+), step (\d+)")


def train_job(config: RunConfig, run_dir: Path, **kwargs: Any) -> dict:
    """``bike.train.run`` as a rehearsal: stop after the first optimiser step as on a preemption
    (``checkpoints/latest.pt``), run again, check that it resumed at that step and finished the rest."""
    from bike import train
    from bike.engine import train_loop

    run_dir = Path(run_dir)
    t0 = time.time()
    preempted_at = None
    train_loop.request_stop()  # honoured after the first optimiser step (train_loop.Trainer._fit)
    try:
        result = train.run(config, run_dir, **kwargs)
    except train_loop.Preempted:
        preempted_at = 1
        first = time.time() - t0
        train_loop.clear_stop()
        result = train.run(config, run_dir, **kwargs)
    else:
        first = time.time() - t0
    finally:
        train_loop.clear_stop()
    log = (run_dir / "log.txt").read_text() if (run_dir / "log.txt").is_file() else ""
    resumed = _RESUMED.findall(log)
    steps = _step_seconds(run_dir)
    record: dict[str, Any] = {"kind": "train", "wall_s": round(time.time() - t0, 1), "first_attempt_s": round(first, 1),
                              "preempted_at_step": preempted_at, "resumed_at_step": int(resumed[-1][2]) if resumed else None,
                              "steps": len(steps), "step_s": steps, **_peak_mb()}
    try:
        record["parameters"] = _parameters(run_dir, config)
    except Exception as exc:  # noqa: BLE001 - a count is not worth failing the run
        record["parameters_error"] = f"{type(exc).__name__}: {exc}"
    _record(run_dir, record)
    if preempted_at is None or record["resumed_at_step"] != 1:
        raise RuntimeError(f"rehearsal: {run_dir.name} did not stop after its first step and resume from latest.pt "
                           f"(preempted at {preempted_at}, resumed at {record['resumed_at_step']})")
    return result


def evaluate_job(config: RunConfig, run_dir: Path, **kwargs: Any) -> dict:
    """``bike.evaluate.run`` with its wall time and peak memory recorded."""
    from bike import evaluate

    t0 = time.time()
    result = evaluate.run(config, Path(run_dir), **kwargs)
    record: dict[str, Any] = {"kind": "evaluate", "wall_s": round(time.time() - t0, 1), **_peak_mb()}
    try:
        record["parameters"] = _parameters(Path(run_dir), config)
    except Exception as exc:  # noqa: BLE001
        record["parameters_error"] = f"{type(exc).__name__}: {exc}"
    _record(Path(run_dir), record)
    return result


# --------------------------------------------------------------------------------------- the report
def report_rows(rehearsal: Rehearsal) -> list[dict[str, Any]]:
    plan = rehearsal.plan
    rows = []
    for run in plan.runs if plan is not None else []:
        rd = RunDir(run.run_dir)
        rec = {}
        path = Path(run.run_dir) / RUN_RECORD
        if path.is_file():
            try:
                rec = json.loads(path.read_text())
            except ValueError:
                rec = {}
        state = rd.state()
        result = rd.result() if rd.is_done() else None
        metrics = (result or {}).get("metrics") or {}
        n = rehearsal.notes.get(run.run_id)
        reason = None
        if state != "done":
            try:
                reason = (rd.read_state() or {}).get("reason")
            except Exception:  # noqa: BLE001
                reason = None
        steps = rec.get("step_s") or []
        rows.append({
            "run_id": run.run_id, "real_run_id": n.real_run_id if n else None,
            "requested_by": [f"{s}.{v}" for s, v in run.requested_by], "kind": run.kind, "status": state,
            "reason": reason, "dependencies": list(run.dependencies),
            "settings": n.settings if n else {}, "parameters": rec.get("parameters"),
            "step_s": steps, "step_s_median": sorted(steps)[len(steps) // 2] if steps else None,
            "wall_s": rec.get("wall_s"), "peak_rss_mb": rec.get("peak_rss_mb"),
            "peak_rss_children_mb": rec.get("peak_rss_children_mb"),
            "preempted_at_step": rec.get("preempted_at_step"), "resumed_at_step": rec.get("resumed_at_step"),
            "metrics": sorted(k for k, v in metrics.items() if isinstance(v, (int, float))) if isinstance(metrics, dict) else [],
            "exercised": n.exercised if n else [], "changes": n.changes if n else [],
        })
    return rows


def write_report(rehearsal: Rehearsal, drive: Any, title: str, cluster: str) -> tuple[Path, Path, bool]:
    """``rehearsal.json`` and ``rehearsal.md`` in the rehearsal directory; returns (json, md, ok)."""
    from bike.rundir import atomic_write_json, atomic_write_text

    rows = report_rows(rehearsal)
    ok = bool(rows) and all(r["status"] == "done" for r in rows) and getattr(drive, "tracking_error", None) is None
    doc = {"title": title, "executor": cluster, "ok": ok, "wall_s": round(time.time() - rehearsal.started, 1),
           "cpus": os.cpu_count(), "options": rehearsal.options.__dict__ | {"backbones": list(rehearsal.options.backbones)},
           "mlflow": getattr(drive, "tracking_error", None) or "logged", "runs": rows,
           "cells": len(getattr(drive, "cells", []) or []), "cells_missing": len(getattr(drive, "missing", []) or [])}
    root = rehearsal.results
    json_path, md_path = root / REPORT_JSON, root / REPORT_MARKDOWN
    atomic_write_json(json_path, doc)
    lines = [f"# Rehearsal: {title}", "",
             f"{len(rows)} run(s) at full scale on {os.cpu_count()} CPU(s), executor {cluster}, "
             f"{doc['wall_s']:.0f} s; MLflow: {doc['mlflow']}; cells with a value: {doc['cells']}, "
             f"without: {doc['cells_missing']}. Status: {'ok' if ok else 'FAILED'}.", "",
             "| run | variant(s) | kind | status | backbone | frames×px | views | batch (real) | params (M) | step s | wall s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["settings"]
        params = f"{r['parameters'] / 1e6:.1f}" if r["parameters"] else "–"
        batch = f"{s.get('batch')} ({s.get('real_batch')})" if s.get("batch") else "–"
        step = f"{r['step_s_median']:.2f}" if r["step_s_median"] else "–"
        lines.append(f"| {r['run_id']} | {', '.join(r['requested_by'])} | {r['kind']} | {r['status']} | {s.get('backbone')} | "
                     f"{s.get('frames')}×{s.get('resolution')} | {s.get('views')} | {batch} | {params} | {step} | "
                     f"{r['wall_s'] if r['wall_s'] is not None else '–'} | {r['peak_rss_mb'] if r['peak_rss_mb'] is not None else '–'} |")
    lines += ["", "## Per run: what was exercised and what the rehearsal changed", ""]
    for r in rows:
        lines.append(f"- **{r['run_id']}** ({', '.join(r['requested_by'])}; real run id {r['real_run_id']}): {r['status']}"
                     + (f" — {r['reason']}" if r["reason"] else ""))
        lines += [f"  - exercised: {x}" for x in r["exercised"]]
        if r["preempted_at_step"] is not None:
            lines.append(f"  - preempted after step {r['preempted_at_step']}, resumed at step {r['resumed_at_step']}; step times {r['step_s']}")
        if r["metrics"]:
            lines.append(f"  - metrics: {', '.join(r['metrics'])}")
        lines += [f"  - changed: {x}" for x in r["changes"]]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path, ok


# --------------------------------------------------------------------------------------- entry point
def fresh(root: Path) -> None:
    """Remove a previous rehearsal's runs, caches, jobs and MLflow store (the data mirror is kept)."""
    for name in ("runs", "cache", "submitit", "mlflow.db", "mlartifacts", "mlruns", REPORT_JSON, REPORT_MARKDOWN):
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def rehearse(items: Sequence[str], results: str | Path = "results", cluster: str = "local",
             options: Optional[RehearsalOptions] = None, only: Optional[Sequence[str]] = None,
             parallelism: int = 1, poll_s: float = 2.0, keep: bool = False,
             log: Callable[[str], None] = print) -> tuple[bool, Path]:
    """Rehearse ``items`` (spec files and ``key=value`` overrides, or ``table6`` / ``paper`` / ``table:<id>``);
    returns (every run done and logged, the Markdown report)."""
    from harness.spec import load_spec

    options = options or RehearsalOptions(cluster=cluster)
    root = rehearsal_root(results)
    root.mkdir(parents=True, exist_ok=True)
    if not keep:
        fresh(root)
    rehearsal = Rehearsal(root, options)
    overrides = [i for i in items if "=" in i]
    names = [i for i in items if "=" not in i]
    if not names:
        raise RehearsalError("command line: nothing to rehearse (bikebench rehearse SPEC... | table6 | paper | table:ID)")
    common = dict(scale="full", cluster=cluster, results=root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                  job_targets=rehearsal.job_targets, parallelism=parallelism, poll_s=poll_s, rewrite=rehearsal,
                  absent_checkpoints="plan")  # a released checkpoint absent here: its run evaluates random weights
    presets = [n for n in names if n in ("table6", "paper") or n.startswith("table:")]
    if presets and len(names) > 1:
        raise RehearsalError(f"command line: {presets[0]!r} is rehearsed alone (got {', '.join(names)})")
    if names == ["table6"]:
        from harness.table6 import run_table6

        drive = run_table6(overrides=overrides, out=_Writer(log), only=only, **common)
        title = "Table 6"
    elif names == ["paper"]:
        from harness.paper_tables import run_paper

        drive = run_paper(overrides=overrides, out=_Writer(log), **common)
        title = "every table of the paper"
    elif presets:
        from harness.paper_tables import run_table

        table = names[0].split(":", 1)[1]
        drive = run_table(table, overrides=overrides, out=_Writer(log), **common)
        title = f"Table {table}"
    else:
        from harness.drive import run_specs
        from harness.table6 import plain_markdown
        from bike.rundir import atomic_write_text

        specs = [load_spec(p, overrides) for p in names]
        drive = run_specs(specs, only=only, log=log, **common)
        title = ", ".join(s.name for s in specs)
        atomic_write_text(root / "cells.md", plain_markdown(drive.cells, drive.missing, f"Rehearsal of {title} (full scale, synthetic data)"))
    _, md, ok = write_report(rehearsal, drive, title, cluster)
    return ok and drive.ok, md


class _Writer:
    """A file-like ``out`` for the table commands that sends lines to ``log``."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def write(self, text: str) -> int:
        if text.strip():
            self.log(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass
