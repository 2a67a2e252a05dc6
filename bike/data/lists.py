"""Readers for the dataset list formats (see ``docs/bike-method.md``, "File formats").

Every reader returns ``list[VideoRecord]`` with absolute paths. Formats (whitespace separated, ``#``
comments and blank lines ignored):

* video list      ``<relative_path>.mp4 <label>``                      (K400, K600, world)
* frame-dir list  ``<relative_dir> <num_frames> <label>``              (frames ``img_00001.jpg`` ...; the
                  authors' UCF, HMDB, K400 ``*_rgb_*`` and ActivityNet lists). A count of 0 (16 lines of the
                  released ``hmdb_full_for_zeroshot.txt``) means "count the directory", as the released
                  code always does.
* trimmed list    ``<relative_path> <label> <start_s> <end_s>``        (ActivityNet instances cut from videos)
* class CSV       header ``id,name`` then ``0,abseiling`` ... (ids 0..K-1 in order)
* Charades        classes ``c000 Holding some clothes``; train CSV ``Charades_train_split_label.csv``
                  ``video_id,label,start_time,end_time,total_time`` (one action instance per row; rows with
                  end <= start are dropped, as the released code drops them); test CSV ``Charades_v1_test.csv``
                  (columns ``id`` and ``actions`` = ``c077 12.10 18.00;c079 ...``), one multi-label record per video.
* ActivityNet     train: the released instance list ``anet_train_instance_fps1.txt`` (a frame-dir list of
                  pre-cut instance folders) or a trimmed list; val: ``anet_val_video_fps1.txt`` (frame-dir) or a
                  video list. The field count of the first entry says which.

Paths are ``root`` joined with the entry, as the released code's ``os.path.join(root, path)``, then
normalised (``a//b`` of the released ActivityNet zero-shot list is the same directory as ``a/b``).

A label field is a class index; in multi-label lists it may hold several indices joined by commas
(``3,17``). Labels outside ``0..K-1`` of the class file are errors. Every parse error names the file,
the line, the field and what was expected.

``video_id`` is the list entry as written (the relative path); trimmed instances append the media
fragment ``#t=<start>,<end>`` as written in the list, so ids are unique keys (duplicates are errors).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

Label = Union[int, tuple[int, ...]]
PathLike = Union[str, os.PathLike]
_log = logging.getLogger(__name__)

#: Number of Charades action classes (``c000`` .. ``c156``).
CHARADES_NUM_CLASSES = 157
#: Extension of the Charades videos as distributed (``Charades_v1_480/<id>.mp4``).
CHARADES_VIDEO_EXT = ".mp4"


class ListFormatError(ValueError):
    """A list, class or annotation file that cannot be parsed; the message names file, line and field."""


class LabelRangeError(ListFormatError):
    """A list's label outside the class file's range (the list and the class file do not belong together)."""


@dataclass(frozen=True)
class VideoRecord:
    """One sample of a dataset list.

    path:       absolute path of the video file or frame directory.
    label:      class index, or a tuple of class indices (multi-label; may be empty).
    video_id:   the list entry as written (unique key; trimmed instances carry ``#t=start,end``).
    num_frames: frame count given by the list (frame directories), else None (read from the video).
    start, end: seconds of a trimmed instance inside the video, else None (whole video).
    """

    path: str
    label: Label
    video_id: str
    num_frames: Optional[int] = None
    start: Optional[float] = None
    end: Optional[float] = None

    @property
    def is_multi_label(self) -> bool:
        return isinstance(self.label, tuple)

    @property
    def is_trimmed(self) -> bool:
        return self.start is not None or self.end is not None


# --------------------------------------------------------------------------- helpers
def _lines(path: PathLike) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, whitespace fields) of the non-blank, non-comment lines."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ListFormatError(f"{path}: list file not found") from None
    except UnicodeDecodeError as exc:
        raise ListFormatError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        yield lineno, stripped.split()


def _where(path: PathLike, lineno: int) -> str:
    return f"{path}:{lineno}"


def count_entry_lines(path: PathLike, csv_header: bool = False) -> int:
    """Entry lines of a list: non-blank, non-comment lines (CSV: records after the header row)."""
    path = Path(path)
    if not csv_header:
        return sum(1 for _ in _lines(path))
    try:
        with path.open(newline="") as handle:
            rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    except FileNotFoundError:
        raise ListFormatError(f"{path}: list file not found") from None
    return max(len(rows) - 1, 0)


def check_line_count(path: PathLike, expected: int, found: int, field: str, what: str = "entry lines") -> None:
    """A clear error when a file does not have the ``expected`` count a spec declares."""
    if found != expected:
        raise ListFormatError(
            f"{path}: {found} {what}; expected {expected} ({field}): not the whole released file, or another "
            "version of it (fix the path, or the count in the spec)"
        )


def _parse_int(text: str, path: PathLike, lineno: int, field: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ListFormatError(
            f"{_where(path, lineno)}: field '{field}': got {text!r}; expected an integer >= {minimum}"
        ) from None
    if value < minimum:
        raise ListFormatError(f"{_where(path, lineno)}: field '{field}': got {value}; expected an integer >= {minimum}")
    return value


def _parse_seconds(text: str, path: PathLike, lineno: int, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise ListFormatError(
            f"{_where(path, lineno)}: field '{field}': got {text!r}; expected a non-negative number of seconds"
        )
    return value


def _check_range(value: int, num_classes: Optional[int], path: PathLike, lineno: int, field: str) -> None:
    if num_classes is not None and not 0 <= value < num_classes:
        raise LabelRangeError(
            f"{_where(path, lineno)}: field '{field}': label {value} is out of range; "
            f"expected 0..{num_classes - 1} ({num_classes} classes in the class file)"
        )


def _parse_label(
    text: str, path: PathLike, lineno: int, num_classes: Optional[int], multi_label: bool, field: str = "label"
) -> Label:
    """``"3"`` -> 3; with ``multi_label``, ``"3,17"`` -> (3, 17) and ``"3"`` -> (3,)."""
    parts = text.split(",")
    if len(parts) > 1 and not multi_label:
        raise ListFormatError(
            f"{_where(path, lineno)}: field '{field}': got {text!r}; expected one class index "
            "(several comma-separated labels need data.multi_label: true)"
        )
    values = [_parse_int(p, path, lineno, field) for p in parts]
    for v in values:
        _check_range(v, num_classes, path, lineno, field)
    if multi_label:
        return tuple(sorted(set(values)))
    return values[0]


def _check_fields(fields: list[str], names: Sequence[str], path: PathLike, lineno: int) -> None:
    if len(fields) != len(names):
        raise ListFormatError(
            f"{_where(path, lineno)}: got {len(fields)} field(s) {fields!r}; expected {len(names)}: "
            + " ".join(f"<{n}>" for n in names)
            + " (whitespace separated; paths cannot contain spaces)"
        )


def _absolute(root: PathLike, relative: str) -> str:
    return os.path.abspath(os.path.join(os.fspath(root), relative))


class _UniqueIds:
    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.seen: dict[str, int] = {}

    def add(self, video_id: str, lineno: int) -> None:
        if video_id in self.seen:
            raise ListFormatError(
                f"{_where(self.path, lineno)}: entry {video_id!r} duplicates line {self.seen[video_id]}; "
                "expected every list entry to be unique"
            )
        self.seen[video_id] = lineno


def trimmed_video_id(relative: str, start_text: str, end_text: str) -> str:
    """Id of a trimmed instance: the path plus the media fragment ``#t=start,end`` as written."""
    return f"{relative}#t={start_text},{end_text}"


# --------------------------------------------------------------------------- list readers
def read_video_list(
    list_file: PathLike, root: PathLike, num_classes: Optional[int] = None, multi_label: bool = False
) -> list[VideoRecord]:
    """``<relative_path> <label>`` lines -> records (num_frames read later from the video)."""
    out: list[VideoRecord] = []
    ids = _UniqueIds(list_file)
    for lineno, fields in _lines(list_file):
        _check_fields(fields, ("relative_path", "label"), list_file, lineno)
        rel, label_text = fields
        label = _parse_label(label_text, list_file, lineno, num_classes, multi_label)
        ids.add(rel, lineno)
        out.append(VideoRecord(path=_absolute(root, rel), label=label, video_id=rel))
    return out


def read_frame_dir_list(
    list_file: PathLike, root: PathLike, num_classes: Optional[int] = None, multi_label: bool = False
) -> list[VideoRecord]:
    """``<relative_dir> <num_frames> <label>`` lines -> records with ``num_frames`` set.

    ``num_frames`` 0 gives ``None``: the decoder counts the directory (the released code always counts it).
    """
    out: list[VideoRecord] = []
    ids = _UniqueIds(list_file)
    for lineno, fields in _lines(list_file):
        _check_fields(fields, ("relative_dir", "num_frames", "label"), list_file, lineno)
        rel, n_text, label_text = fields
        n = _parse_int(n_text, list_file, lineno, "num_frames", minimum=0)
        label = _parse_label(label_text, list_file, lineno, num_classes, multi_label)
        ids.add(rel, lineno)
        out.append(VideoRecord(path=_absolute(root, rel), label=label, video_id=rel, num_frames=n or None))
    return out


def read_trimmed_list(
    list_file: PathLike, root: PathLike, num_classes: Optional[int] = None, multi_label: bool = False
) -> list[VideoRecord]:
    """``<relative_path> <label> <start_s> <end_s>`` lines -> one record per trimmed instance.

    The format bikebench defines for ActivityNet training instances (one line per annotated segment).
    """
    out: list[VideoRecord] = []
    ids = _UniqueIds(list_file)
    for lineno, fields in _lines(list_file):
        _check_fields(fields, ("relative_path", "label", "start_s", "end_s"), list_file, lineno)
        rel, label_text, s_text, e_text = fields
        label = _parse_label(label_text, list_file, lineno, num_classes, multi_label)
        start = _parse_seconds(s_text, list_file, lineno, "start_s")
        end = _parse_seconds(e_text, list_file, lineno, "end_s")
        if end <= start:
            raise ListFormatError(
                f"{_where(list_file, lineno)}: field 'end_s': got {e_text}; expected a time after start_s={s_text}"
            )
        vid = trimmed_video_id(rel, s_text, e_text)
        ids.add(vid, lineno)
        out.append(VideoRecord(path=_absolute(root, rel), label=label, video_id=vid, start=start, end=end))
    return out


def _first_entry_width(list_file: PathLike) -> int:
    for _, fields in _lines(list_file):
        return len(fields)
    return 0


def read_activitynet_train(list_file: PathLike, root: PathLike, num_classes: Optional[int] = None) -> list[VideoRecord]:
    """ActivityNet training instances: the released ``anet_train_instance_fps1.txt`` (``<instance_dir>
    <num_frames> <label>``, each instance cut into its own frame folder) or a trimmed list ``<relative_path>
    <label> <start_s> <end_s>`` (instances cut from the videos at read time); the first entry says which."""
    if _first_entry_width(list_file) == 3:
        return read_frame_dir_list(list_file, root, num_classes)
    return read_trimmed_list(list_file, root, num_classes)


def read_activitynet_val(list_file: PathLike, root: PathLike, num_classes: Optional[int] = None) -> list[VideoRecord]:
    """ActivityNet validation: whole (untrimmed) videos, the released ``anet_val_video_fps1.txt``
    (``<video_dir> <num_frames> <label>``) or a video list ``<relative_path> <label>``; the first entry says which."""
    if _first_entry_width(list_file) == 3:
        return read_frame_dir_list(list_file, root, num_classes)
    return read_video_list(list_file, root, num_classes)


# --------------------------------------------------------------------------- class files
def read_class_csv(path: PathLike) -> list[str]:
    """CSV with header ``id,name``; ids must be 0..K-1 in order. Returns the K names."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ListFormatError(f"{path}: class file not found") from None
    rows = list(csv.reader(text.splitlines()))
    rows = [(i, r) for i, r in enumerate(rows, start=1) if r and any(c.strip() for c in r)]
    if not rows:
        raise ListFormatError(f"{path}: empty class file; expected a header `id,name` and one row per class")
    header_line, header = rows[0]
    if [c.strip() for c in header[:2]] != ["id", "name"]:
        raise ListFormatError(f"{path}:{header_line}: header: got {','.join(header)!r}; expected 'id,name'")
    names: list[str] = []
    for lineno, row in rows[1:]:
        if len(row) != 2:
            raise ListFormatError(
                f"{path}:{lineno}: got {len(row)} column(s) {row!r}; expected 2: id,name "
                "(quote names that contain commas)"
            )
        idx = _parse_int(row[0].strip(), path, lineno, "id")
        if idx != len(names):
            raise ListFormatError(f"{path}:{lineno}: field 'id': got {idx}; expected {len(names)} (ids are 0..K-1 in order)")
        name = row[1].strip()
        if not name:
            raise ListFormatError(f"{path}:{lineno}: field 'name': empty; expected a class name")
        names.append(name)
    if not names:
        raise ListFormatError(f"{path}: no classes after the header")
    return names


def _charades_class_index(text: str, path: PathLike, lineno: int, field: str, num_classes: Optional[int]) -> int:
    """``c077`` (or a bare ``77``) -> 77, checked against ``num_classes``."""
    body = text[1:] if text[:1] in ("c", "C") else text
    if not body.isdigit():
        raise ListFormatError(f"{_where(path, lineno)}: field '{field}': got {text!r}; expected a class id like 'c077'")
    value = int(body)
    _check_range(value, num_classes, path, lineno, field)
    return value


def read_charades_classes(path: PathLike) -> list[str]:
    """Lines ``c000 Holding some clothes`` (ids c000.. in order) -> names."""
    names: list[str] = []
    for lineno, fields in _lines(path):
        if len(fields) < 2:
            raise ListFormatError(f"{_where(path, lineno)}: got {fields!r}; expected '<cNNN> <class name>'")
        idx = _charades_class_index(fields[0], path, lineno, "class_id", num_classes=None)
        if idx != len(names):
            raise ListFormatError(
                f"{_where(path, lineno)}: field 'class_id': got {fields[0]!r}; expected c{len(names):03d} (ids in order)"
            )
        names.append(" ".join(fields[1:]))
    if not names:
        raise ListFormatError(f"{path}: no classes; expected lines '<cNNN> <class name>'")
    return names


def _read_csv_rows(path: PathLike, required: Sequence[str]) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    path = Path(path)
    try:
        handle = path.open(newline="")
    except FileNotFoundError:
        raise ListFormatError(f"{path}: annotation file not found") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ListFormatError(f"{path}:1: header: missing column(s) {missing}; expected columns {list(required)}")
        rows = []
        for row in reader:
            clean = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
            if not any(clean.values()):
                continue
            rows.append((reader.line_num, clean))
    return header, iter(rows)


def read_charades_train(
    csv_file: PathLike, root: PathLike, num_classes: int = CHARADES_NUM_CLASSES, ext: str = CHARADES_VIDEO_EXT
) -> list[VideoRecord]:
    """CSV ``video_id,label,start_time,end_time,total_time`` (the released
    ``Charades_train_split_label.csv``) -> one record per action instance.

    ``label`` is ``c077`` or ``77``; the instance is cut at start/end (seconds). The video file is
    ``<root>/<video_id><ext>``. Rows whose end is not after their start (7 rows of the released file)
    are dropped and logged, as the released reader drops them (``float(end) > float(start)``). Rows
    repeating an earlier row exactly (same video, class, start and end) are one instance: they are
    collapsed and logged.
    """
    required = ("video_id", "label", "start_time", "end_time")
    _, rows = _read_csv_rows(csv_file, required)
    out: list[VideoRecord] = []
    ids = _UniqueIds(csv_file)
    duplicates: list[int] = []
    empty: list[int] = []
    for lineno, row in rows:
        vid = row["video_id"]
        if not vid:
            raise ListFormatError(f"{_where(csv_file, lineno)}: field 'video_id': empty; expected a Charades id")
        label = _charades_class_index(row["label"], csv_file, lineno, "label", num_classes)
        start = _parse_seconds(row["start_time"], csv_file, lineno, "start_time")
        end = _parse_seconds(row["end_time"], csv_file, lineno, "end_time")
        if end <= start:
            empty.append(lineno)  # the released reader keeps only rows with end > start
            continue
        rel = vid + ext
        key = trimmed_video_id(rel, row["start_time"], row["end_time"]) + f"&c{label:03d}"
        if key in ids.seen:
            duplicates.append(lineno)  # the same instance annotated twice: one sample, not two
            continue
        ids.add(key, lineno)
        out.append(VideoRecord(path=_absolute(root, rel), label=label, video_id=key, start=start, end=end))
    if empty:
        _log.warning(
            "%s: %d instance row(s) whose end_time is not after start_time dropped, as the released code drops "
            "them (lines %s)", csv_file, len(empty), empty[:10],
        )
    if duplicates:
        _log.warning("%s: %d duplicate instance row(s) collapsed (lines %s)", csv_file, len(duplicates), duplicates[:10])
    return out


def read_charades_test(
    csv_file: PathLike, root: PathLike, num_classes: int = CHARADES_NUM_CLASSES, ext: str = CHARADES_VIDEO_EXT
) -> list[VideoRecord]:
    """``Charades_v1_test.csv`` (columns ``id`` and ``actions``) -> one multi-label record per video.

    ``actions`` = ``c077 12.10 18.00;c079 11.80 17.30`` -> label ``(77, 79)``; an empty ``actions``
    gives an empty tuple (a video without annotated actions).
    """
    _, rows = _read_csv_rows(csv_file, ("id", "actions"))
    out: list[VideoRecord] = []
    ids = _UniqueIds(csv_file)
    for lineno, row in rows:
        vid = row["id"]
        if not vid:
            raise ListFormatError(f"{_where(csv_file, lineno)}: field 'id': empty; expected a Charades id")
        classes: set[int] = set()
        for item in filter(None, (a.strip() for a in row["actions"].split(";"))):
            parts = item.split()
            if len(parts) != 3:
                raise ListFormatError(
                    f"{_where(csv_file, lineno)}: field 'actions': got {item!r}; expected '<cNNN> <start> <end>'"
                )
            classes.add(_charades_class_index(parts[0], csv_file, lineno, "actions", num_classes))
            _parse_seconds(parts[1], csv_file, lineno, "actions")
            _parse_seconds(parts[2], csv_file, lineno, "actions")
        rel = vid + ext
        ids.add(rel, lineno)
        out.append(VideoRecord(path=_absolute(root, rel), label=tuple(sorted(classes)), video_id=rel))
    return out


# --------------------------------------------------------------------------- dispatch
def _expected_lines(data_cfg, key: str) -> Optional[int]:
    return (getattr(data_cfg, "expected_lines", None) or {}).get(key)


def read_classes(data_cfg) -> list[str]:
    """Class names of a dataset (``data.class_file``; Charades format for ``format: charades``)."""
    if not data_cfg.class_file:
        raise ListFormatError(f"data.class_file is empty; expected the class file of dataset {data_cfg.dataset!r}")
    if data_cfg.format == "charades":
        names = read_charades_classes(data_cfg.class_file)
    else:
        names = read_class_csv(data_cfg.class_file)
    expected = _expected_lines(data_cfg, "classes")
    if expected is not None:
        check_line_count(data_cfg.class_file, expected, len(names), "data.expected_lines.classes", "classes")
    return names


def read_dataset(data_cfg, split: str) -> tuple[list[VideoRecord], list[str]]:
    """Records of ``split`` ("train" | "val" | "test") and the class names, per ``data_cfg.format``.

    video_list:  every split is a video list.
    frame_dir:   every split is a frame-directory list.
    charades:    train = instance CSV (single labels), val/test = Charades_v1_test-style CSV (multi-hot).
    activitynet: train = instance list (released frame-dir, or trimmed ``<path> <label> <start> <end>``),
                 val/test = whole videos (released frame-dir, or a video list).

    Entries are relative to ``data.train_root`` (train) / ``data.val_root`` (val, test), else ``data.root``.
    ``data.expected_lines`` (split -> entry lines) makes a list of another length an error.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"read_dataset: split {split!r}; expected 'train', 'val' or 'test'")
    list_file = getattr(data_cfg, f"{split}_list")
    if not list_file:
        raise ListFormatError(f"data.{split}_list is not set; expected the {split} list of dataset {data_cfg.dataset!r}")
    names = read_classes(data_cfg)
    k = len(names)
    root_for = getattr(data_cfg, "root_for", None)
    root = root_for(split) if root_for is not None else data_cfg.root
    fmt = data_cfg.format
    expected = _expected_lines(data_cfg, split)
    if expected is not None:
        found = count_entry_lines(list_file, csv_header=fmt == "charades")
        check_line_count(list_file, expected, found, f"data.expected_lines.{split}")
    if fmt == "video_list":
        records = read_video_list(list_file, root, k, multi_label=data_cfg.multi_label)
    elif fmt == "frame_dir":
        records = read_frame_dir_list(list_file, root, k, multi_label=data_cfg.multi_label)
    elif fmt == "charades":
        records = read_charades_train(list_file, root, k) if split == "train" else read_charades_test(list_file, root, k)
    elif fmt == "activitynet":
        records = read_activitynet_train(list_file, root, k) if split == "train" else read_activitynet_val(list_file, root, k)
    else:  # pragma: no cover - DataConfig's Literal rejects anything else
        raise ValueError(f"data.format {fmt!r}; expected video_list, frame_dir, charades or activitynet")
    if not records:
        raise ListFormatError(f"{list_file}: no entries; expected at least one video")
    return records, names


def format_label(label: Label) -> str:
    """Inverse of the label field: ``3`` -> ``"3"``, ``(3, 17)`` -> ``"3,17"``."""
    if isinstance(label, tuple):
        if not label:
            raise ValueError("an empty multi-label tuple cannot be written to a list (no class index)")
        return ",".join(str(v) for v in label)
    return str(int(label))


# --------------------------------------------------------------------------- exclusion lists
def read_exclude_list(path: PathLike) -> set[str]:
    """Entries of an exclusion list (``data.exclude_list``): the first field of each line that is neither
    blank nor a ``#`` comment; the rest of a line (``# reason``) is ignored. ``bikebench data check
    --write-exclude`` writes these files."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ListFormatError(f"{path}: exclusion list not found (data.exclude_list); expected a file of list entries") from None
    except UnicodeDecodeError as exc:
        raise ListFormatError(f"{path}: data.exclude_list is not a UTF-8 text file ({exc.reason})") from None
    out: set[str] = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.add(stripped.split()[0])
    return out


def apply_exclude_list(records: Sequence[VideoRecord], data_cfg) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(kept, excluded) records under ``data_cfg.exclude_list`` (None: all kept).

    An entry matches a record's list entry (``video_id``; a trimmed instance by the path before its
    ``#t=`` fragment, so one entry drops every instance of a bad video) or, when absolute, its path.
    """
    path = getattr(data_cfg, "exclude_list", None)
    if not path:
        return list(records), []
    entries = read_exclude_list(path)
    absolute = {os.path.abspath(e) for e in entries if os.path.isabs(e)}
    kept: list[VideoRecord] = []
    excluded: list[VideoRecord] = []
    for r in records:
        hit = r.video_id in entries or r.video_id.split("#t=")[0] in entries or r.path in absolute
        (excluded if hit else kept).append(r)
    return kept, excluded
