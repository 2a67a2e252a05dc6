"""Per-file integrity checks of a dataset's videos and frame directories (``bikebench data check``).

Pure functions, one file at a time; ``harness.datacheck`` runs them in parallel, caches their results
and writes the report. Every problem is a :class:`Problem` with one of :data:`REASONS`:

* ``missing``         the file (or frame directory) does not exist
* ``empty``           a 0-byte file, or a frame directory without a single frame
* ``truncated``       an mp4/mov whose boxes run past the end of the file, or a stream that ends before
                      the frames its container declares
* ``undecodable``     not a video at all (e.g. a text file named ``.mp4``), or decoding fails
* ``too_few_frames``  a frame directory holding fewer frames than its list line says

Decode levels (``decode``): ``none`` opens the container (headers, frame count) only; ``sample``
decodes ``sample`` frames spread over the video with the run's decoder; ``all`` decodes every frame
(PyAV, straight through) and compares the count with the container's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

REASONS = ("missing", "empty", "truncated", "undecodable", "too_few_frames")
DECODE_LEVELS = ("none", "sample", "all")
#: Top-level box types an ISO-BMFF file (mp4, mov, m4v) starts with.
_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx", b"moof", b"mfra", b"meta"}


@dataclass(frozen=True)
class Problem:
    """Why a file is bad: ``reason`` (one of :data:`REASONS`) and a readable ``detail``."""

    reason: str
    detail: str


def fingerprint(path: str, frame_template: str = "img_{:05d}.jpg") -> Optional[list]:
    """What a cached check of ``path`` is valid for: ``[size, mtime_ns]`` of a file; for a frame directory
    ``[frames, total bytes, newest mtime_ns]`` of its entries. None when the path does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isdir(path):
        return [int(st.st_size), int(st.st_mtime_ns)]
    n, size, newest = 0, 0, int(st.st_mtime_ns)
    with os.scandir(path) as it:
        for entry in it:
            try:
                est = entry.stat()
            except OSError:
                continue
            n += 1
            size += int(est.st_size)
            newest = max(newest, int(est.st_mtime_ns))
    return [n, size, newest]


def _iso_truncation(path: str, size: int) -> Optional[str]:
    """For an ISO-BMFF file: why its top-level boxes do not fit the file, else None."""
    offset, seen = 0, []
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            head = f.read(16)
            if len(head) < 8:
                return f"{size - offset} stray byte(s) after the last box at byte {offset}"
            box = int.from_bytes(head[:4], "big")
            kind = head[4:8]
            if box == 1:
                if len(head) < 16:
                    return f"box {kind.decode('latin-1')!r} at byte {offset} is cut inside its header"
                box = int.from_bytes(head[8:16], "big")
            elif box == 0:  # the box runs to the end of the file
                box = size - offset
            if box < 8:
                return f"box {kind.decode('latin-1')!r} at byte {offset} declares an impossible size {box}"
            if offset + box > size:
                return (f"box {kind.decode('latin-1')!r} at byte {offset} declares {box} bytes; the file ends "
                        f"{size - offset} bytes after it starts")
            seen.append(kind)
            offset += box
    if b"moov" not in seen and b"moof" not in seen:
        return "no 'moov' box (the index of the streams): the file was cut before it was written"
    return None


def _looks_iso(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] in _ISO_BOXES


def _classify(reason: str) -> str:
    return "truncated" if "truncated" in reason or "ended before" in reason else "undecodable"


def check_video_file(path: str, decode: str = "none", sample: int = 8, backend: str = "pyav") -> Optional[Problem]:
    """The problem of one video file, or None when it is fine at the ``decode`` level."""
    from bike.data.decode import BadVideoError, PyAVSource, open_video
    from bike.data.lists import VideoRecord

    if decode not in DECODE_LEVELS:
        raise ValueError(f"decode {decode!r}; expected one of {DECODE_LEVELS}")
    if not os.path.exists(path):
        return Problem("missing", "file not found")
    if os.path.isdir(path):
        return Problem("undecodable", "is a directory; the list names a video file")
    size = os.path.getsize(path)
    if size == 0:
        return Problem("empty", "0-byte file")
    with open(path, "rb") as f:
        head = f.read(16)
    if _looks_iso(head):
        why = _iso_truncation(path, size)
        if why:
            return Problem("truncated", why)
    record = VideoRecord(path=os.path.abspath(path), label=0, video_id=os.path.basename(path))
    try:
        src = PyAVSource(record)  # headers: container, video stream, declared frame count
        declared = len(src)
        src.close()
    except BadVideoError as exc:
        detail = exc.reason
        if not _looks_iso(head):
            detail += f"; the file starts with {head[:12]!r}, not a known video container"
        return Problem("undecodable", detail)
    if decode == "none":
        return None
    if decode == "sample":
        import numpy as np

        try:
            with open_video(record, backend) as src:
                n = len(src)
                idx = np.unique(np.linspace(0, n - 1, num=max(1, min(sample, n))).round().astype(int))
                src.read(idx)
        except BadVideoError as exc:
            return Problem(_classify(exc.reason), exc.reason)
        return None
    return _decode_all(path, declared)


def _decode_all(path: str, declared: int) -> Optional[Problem]:
    import av

    count = 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            for _ in container.decode(stream):
                count += 1
    except Exception as exc:  # noqa: BLE001 - any decoder error makes the file bad
        from bike.data.decode import _short_message

        return Problem("undecodable", f"decoding failed after {count} frame(s) (PyAV: {_short_message(exc)})")
    if count == 0:
        return Problem("undecodable", "the video stream decodes to no frames")
    if declared and count < declared:
        return Problem("truncated", f"decoded {count} of the {declared} frames the container declares")
    return None


def check_frame_dir(
    path: str, num_frames: Optional[int], frame_template: str = "img_{:05d}.jpg", decode: str = "none", sample: int = 8
) -> Optional[Problem]:
    """The problem of one frame directory (``num_frames`` from its list line; None: count it)."""
    from bike.data.decode import _count_frames

    if decode not in DECODE_LEVELS:
        raise ValueError(f"decode {decode!r}; expected one of {DECODE_LEVELS}")
    if not os.path.exists(path):
        return Problem("missing", "frame directory not found")
    if not os.path.isdir(path):
        return Problem("undecodable", "is a file; the list names a frame directory")
    have = _count_frames(path, frame_template)
    if have == 0:
        return Problem("empty", f"no frames named like {frame_template.format(1)!r}")
    n = num_frames if num_frames else have
    if have < n:
        return Problem("too_few_frames", f"{have} frame(s); the list says {n} ({frame_template.format(have + 1)} missing)")
    if decode == "none":
        empty = [i for i in range(n) if os.path.getsize(os.path.join(path, frame_template.format(i + 1))) == 0]
        if empty:
            return Problem("undecodable", f"{len(empty)} 0-byte frame(s), the first {frame_template.format(empty[0] + 1)}")
        return None
    if decode == "sample":
        import numpy as np

        wanted = sorted(set(np.linspace(0, n - 1, num=max(1, min(sample, n))).round().astype(int).tolist()))
    else:
        wanted = list(range(n))
    from PIL import Image

    for i in wanted:
        name = frame_template.format(i + 1)
        try:
            with Image.open(os.path.join(path, name)) as img:
                img.load()
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError / UnidentifiedImageError / SyntaxError
            return Problem("undecodable", f"frame {name} cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})")
    return None


def check_path(
    path: str,
    frame_dir: bool,
    num_frames: Optional[int] = None,
    decode: str = "none",
    sample: int = 8,
    backend: str = "pyav",
    frame_template: str = "img_{:05d}.jpg",
) -> Optional[Problem]:
    """:func:`check_frame_dir` for a frame-directory entry, else :func:`check_video_file`."""
    if frame_dir:
        return check_frame_dir(path, num_frames, frame_template, decode, sample)
    return check_video_file(path, decode, sample, backend)
