"""Evaluation and training protocols: few-shot selection, zero-shot class splits, tuning hold-out.

* Few-shot (Table 4): K videos per class from the training list, seeded (the official code never seeds
  this draw), repeated to keep the full dataset's iterations per epoch; the choice is written out.
* Zero-shot, half classes: split ``s`` = sorted first ``C // 2`` of NumPy's legacy
  ``RandomState(s).permutation(C)`` — identical to the official ``np.random.seed(s);
  np.random.permutation(C)[:C // 2]`` without touching the global RNG.
* Zero-shot K600: three user-supplied split files of 160 class names (or indices). With the released split
  lists (``eval.k600_split_lists``) each split is its own evaluation (:func:`k600_split_configs`).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from bike.data.lists import ListFormatError, VideoRecord, format_label
from bike.rundir import atomic_write_text

if TYPE_CHECKING:
    from bike.config import RunConfig

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- few-shot
def _single_label(record: VideoRecord) -> int:
    if isinstance(record.label, tuple):
        raise ValueError(f"{record.video_id}: few-shot selection needs single-label records, got {record.label}")
    return int(record.label)


def few_shot_select(
    records: Sequence[VideoRecord], shots: int, seed: int, num_classes: Optional[int] = None
) -> list[VideoRecord]:
    """``shots`` records per class drawn without replacement (``np.random.default_rng(seed)``).

    Classes ``0..num_classes-1`` (default: every label present) must each have at least ``shots``
    records. Output: class by class, each class's picks in list order.
    """
    if shots < 1:
        raise ValueError(f"shots={shots}; expected >= 1")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[_single_label(r)].append(i)
    classes = range(num_classes) if num_classes is not None else sorted(by_class)
    short = {c: len(by_class.get(c, [])) for c in classes if len(by_class.get(c, [])) < shots}
    if short:
        listed = ", ".join(f"class {c}: {n}" for c, n in list(short.items())[:10])
        raise ValueError(f"few-shot K={shots}: {len(short)} class(es) have fewer training videos ({listed})")
    rng = np.random.default_rng(seed)
    out: list[VideoRecord] = []
    for c in classes:
        members = by_class[c]
        picked = np.sort(rng.choice(len(members), size=shots, replace=False))
        out.extend(records[members[j]] for j in picked)
    return out


def repeat_to_length(records: Sequence[VideoRecord], target_len: int) -> list[VideoRecord]:
    """Cycle ``records`` to exactly ``target_len`` items (each appears ``floor`` or ``ceil`` times).

    Used to keep the full training set's iterations per epoch with a few-shot selection.
    """
    if not records:
        raise ValueError("repeat_to_length: no records")
    if target_len < len(records):
        raise ValueError(f"target_len={target_len} is shorter than the {len(records)} records")
    reps = math.ceil(target_len / len(records))
    return (list(records) * reps)[:target_len]


def write_video_list(records: Sequence[VideoRecord], path: PathLike, root: PathLike) -> Path:
    """Write ``records`` as a list the readers of :mod:`bike.data.lists` read back (paths relative to ``root``).

    Frame directories: ``<dir> <num_frames> <label>``; trimmed: ``<path> <label> <start> <end>``;
    otherwise ``<path> <label>``. Multi-label labels are comma-joined. All records must be one kind.
    """
    kinds = {("frames" if r.num_frames is not None else "trimmed" if r.is_trimmed else "video") for r in records}
    if len(kinds) > 1:
        raise ValueError(f"write_video_list: records mix list formats {sorted(kinds)}")
    lines = []
    for r in records:
        rel = os.path.relpath(r.path, os.path.abspath(os.fspath(root)))
        if any(ch.isspace() for ch in rel):
            raise ValueError(f"{r.path}: a path with whitespace cannot be written to a whitespace-separated list")
        label = format_label(r.label)
        if r.num_frames is not None:
            lines.append(f"{rel} {r.num_frames} {label}")
        elif r.is_trimmed:
            lines.append(f"{rel} {label} {r.start!r} {r.end!r}")
        else:
            lines.append(f"{rel} {label}")
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def holdout_split(
    records: Sequence[VideoRecord], share: float, seed: int
) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(kept, held out): ``round(share * n)`` records held out (seeded), spread over the classes in
    proportion to their size (``floor(share * n_c)`` each, the remainder one each to randomly drawn
    classes that keep at least one training record); at least one when ``share > 0``. List order kept.

    The "tune" split of ``data.tuning_holdout``: tune on it, never on the test set. Multi-label
    records are grouped by their label tuple.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share={share}; expected 0 <= share < 1")
    by_class: dict = defaultdict(list)
    for i, r in enumerate(records):
        by_class[r.label].append(i)
    rng = np.random.default_rng(seed)
    keys = sorted(by_class, key=lambda k: (isinstance(k, tuple), k))
    quota = {key: int(np.floor(share * len(by_class[key]))) for key in keys}
    total = max(1, int(round(share * len(records)))) if share > 0 and len(records) > 1 else 0
    spare = [key for key in keys if len(by_class[key]) - quota[key] >= 2]
    extra = max(0, total - sum(quota.values()))
    if extra:  # (no draw otherwise: the held-out records of larger lists stay what they were)
        for j in rng.permutation(len(spare))[:extra]:
            quota[spare[j]] += 1
    held: set[int] = set()
    for key in keys:
        members = by_class[key]
        if quota[key]:
            held.update(members[j] for j in rng.choice(len(members), size=quota[key], replace=False))
    kept = [r for i, r in enumerate(records) if i not in held]
    out = [r for i, r in enumerate(records) if i in held]
    return kept, out


# --------------------------------------------------------------------------- zero-shot class splits
def half_class_splits(num_classes: int, num_splits: int = 10) -> list[np.ndarray]:
    """Split ``s``: ``sorted(RandomState(s).permutation(C)[:C // 2])`` for s = 0..num_splits-1.

    Equal to the official ``np.random.seed(s); np.random.permutation(C)[:C // 2]`` (sorted), but uses
    a private ``RandomState`` so the global NumPy RNG is left untouched.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}; expected >= 2")
    out = []
    for s in range(num_splits):
        rs = np.random.RandomState(s)
        out.append(np.sort(rs.permutation(num_classes)[: num_classes // 2]))
    return out


def full_class_split(num_classes: int) -> np.ndarray:
    """All classes: ``arange(C)``."""
    return np.arange(num_classes)


def k600_splits(
    files: Sequence[PathLike],
    class_names: Optional[Sequence[str]] = None,
    split_size: Optional[int] = None,
) -> list[np.ndarray]:
    """Read the K600 zero-shot split files -> sorted index arrays into ``class_names``.

    A line is a class name or a class index, or ``<split id>,<class name>`` as in the released
    ``k160_labels_split{1,2,3}.csv`` (whose ``id,name`` header is skipped; the name is what counts).
    Names are looked up in ``class_names`` (exact match, then case-insensitive); indices must be in
    range. ``split_size`` (160 in the paper) checks every split's size when given.
    """
    if not files:
        raise ValueError("k600_splits: no split files (eval.k600_split_files is empty)")
    lookup = {n: i for i, n in enumerate(class_names or [])}
    lower = {n.lower(): i for n, i in lookup.items()}
    num = len(class_names) if class_names is not None else None
    out = []
    for f in files:
        f = Path(f)
        try:
            lines = f.read_text().splitlines()
        except FileNotFoundError:
            raise ListFormatError(f"{f}: split file not found") from None
        seen: dict[int, int] = {}
        for lineno, line in enumerate(lines, start=1):
            entry = line.strip()
            if not entry or entry.startswith("#") or (lineno == 1 and entry.replace(" ", "").lower() == "id,name"):
                continue
            head, sep, tail = entry.partition(",")
            if sep and head.strip().isdigit() and tail.strip():  # released CSV: "<id within the split>,<name>"
                entry = tail.strip()
            if entry.isdigit():
                idx = int(entry)
                if num is not None and idx >= num:
                    raise ListFormatError(f"{f}:{lineno}: class index {idx} out of range; expected 0..{num - 1}")
            elif entry in lookup:
                idx = lookup[entry]
            elif entry.lower() in lower:
                idx = lower[entry.lower()]
            elif class_names is None:
                raise ListFormatError(f"{f}:{lineno}: class name {entry!r} needs the class names to resolve it")
            else:
                raise ListFormatError(f"{f}:{lineno}: class {entry!r} is not in the class file")
            if idx in seen:
                raise ListFormatError(f"{f}:{lineno}: class {entry!r} repeats line {seen[idx]}")
            seen[idx] = lineno
        if split_size is not None and len(seen) != split_size:
            raise ListFormatError(f"{f}: {len(seen)} classes; expected {split_size}")
        if not seen:
            raise ListFormatError(f"{f}: no classes")
        out.append(np.array(sorted(seen), dtype=np.int64))
    return out


def k600_split_configs(config: "RunConfig") -> list["RunConfig"]:
    """Per split of the released Kinetics-600 zero-shot protocol (``eval.k600_split_lists``), the run config
    that evaluates it, as the authors' three evaluations (``configs/k600/k600_zero_shot_split{1,2,3}.yaml``).

    Split i: ``data.<eval.split>_list`` = ``eval.k600_split_lists[i]`` (read as that list is: ``data.format``,
    ``data.val_root`` or ``data.root``, ``data.exclude_list``), ``data.class_file`` = ``eval.k600_split_files[i]``,
    ``eval.protocol`` = ``zero_shot_full``: every video of the list among every class of its class file (160 in
    the released files), top-k over those classes. ``data.expected_lines`` keeps only the counts of the files
    that stay the run's own (the three lists differ in length); the split fields are cleared. Everything else
    (model, views, ``eval.zero_shot_path``, ``eval.zero_shot_ties``) is the run's. Empty without split lists.
    """
    lists, files = list(config.eval.k600_split_lists or []), list(config.eval.k600_split_files)
    if not lists:
        return []
    if len(lists) != len(files):  # EvalConfig's validator refuses it; a config built without validation may not
        raise ValueError(f"eval.k600_split_lists: {len(lists)} list(s) but eval.k600_split_files has {len(files)}; "
                         "expected one class file per split list")
    split = config.eval.split
    if split not in ("val", "test"):
        raise ValueError(f"eval.k600_split_lists: eval.split {split!r}; expected val or test (the list the split lists replace)")
    data, out = config.data, []
    for list_file, class_file in zip(lists, files):
        same = {split: list_file == getattr(data, f"{split}_list"), "classes": class_file == data.class_file}
        expected = {k: v for k, v in data.expected_lines.items() if same.get(k, True)}
        new_data = data.model_copy(update={f"{split}_list": list_file, "class_file": class_file, "expected_lines": expected})
        new_eval = config.eval.model_copy(update={"protocol": "zero_shot_full", "k600_split_lists": None,
                                                  "k600_split_files": []})
        out.append(config.model_copy(update={"data": new_data, "eval": new_eval}))
    return out
