"""Decoding sampled frames of a video file or a frame directory into ``uint8 [T, H, W, 3]`` RGB.

Backends (``backend=``):

* ``"decord"``    — ``decord.VideoReader(path, num_threads=1)`` + ``get_batch`` (the default; seeks to the
                    keyframe before each wanted frame). Readers are short-lived: open, read, drop
                    (decord 0.6 leaks memory and has seek bugs in long-lived readers).
* ``"pyav"``      — PyAV, sparse: the container is demuxed once (packets, no decoding) and each wanted
                    frame is decoded from the keyframe before it, skipping the packets of frames that
                    nothing references (H.264 ``nal_ref_idc == 0``: libavcodec ``skip_frame=NONREF``)
                    unless they are wanted. The frames equal those of decoding straight through, bit for
                    bit; a stream whose packets cannot be indexed (no or duplicate timestamps, a packet
                    count other than the declared frame count) is decoded straight through instead.
* ``"pyav_seek"`` — PyAV, seeking to the keyframe before each wanted frame (frames identified by pts).

Frame directories (records whose path is a directory, or that carry ``num_frames`` from a
frame-directory list) are read with PIL; frame ``i`` (0-based) is ``frame_template.format(i + 1)``.

Trimmed records (``start``/``end`` in seconds) see only the frames inside their window: index 0 is the
frame at ``floor(start * fps)``, using the stream's average frame rate.

Anything that makes a video unusable raises :class:`BadVideoError` (missing, zero-length, truncated or
undecodable file; frame directory shorter than listed). decord's *known* bugs (see
``KNOWN_DECORD_BUGS``) are not corruption: that file is read with PyAV instead and the fallback is
recorded (logged, and reported by :func:`decoder_fallbacks` and :attr:`VideoSource.fallback_reason`).
Any other decord error is reported as a bad video, never papered over.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Callable, Optional, Sequence

import numpy as np

from bike.data.lists import VideoRecord

_log = logging.getLogger(__name__)

#: Default frame-directory naming (1-based): ``img_00001.jpg``.
DEFAULT_FRAME_TEMPLATE = "img_{:05d}.jpg"
#: Selectable backends for video files.
BACKENDS = ("decord", "pyav", "pyav_seek")
#: Substrings of decord errors that are decord bugs, not damaged files (fall back to PyAV).
#: ``DECORDArrayCopyFromTo``: decord 0.6 cannot copy out frames of some widths (e.g. 16 and 48 px).
KNOWN_DECORD_BUGS = ("DECORDArrayCopyFromTo",)
#: decord reader threads; 1 was measured fastest on 2 shared cores (docs/stack.md).
DECORD_THREADS = 1
#: PyAV decoder threads per reader: DataLoader workers already run in parallel, one core each.
PYAV_THREADS = 1
#: Codecs whose unwanted non-reference frames the sparse PyAV reader skips (``skip_frame=NONREF``):
#: H.264's ``nal_ref_idc == 0`` frames are never referenced. (HEVC's "sub-layer non-reference"
#: pictures may be referenced by higher sub-layers, and VP9 frames update probability contexts:
#: those are decoded in full.)
SKIP_NONREF_CODECS = ("h264",)

_FALLBACKS: dict[str, str] = {}


class BadVideoError(RuntimeError):
    """A video that cannot be used: ``path`` and a human-readable ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def decoder_fallbacks() -> dict[str, str]:
    """Files of this process that decord could not read for a known decord bug: {path: reason}."""
    return dict(_FALLBACKS)


def _record_fallback(path: str, reason: str) -> None:
    if path not in _FALLBACKS:
        _log.warning("decord failed on %s (%s); reading it with PyAV", path, reason)
    _FALLBACKS[path] = reason


def is_frame_dir(record: VideoRecord) -> bool:
    """A frame directory: an existing directory, or a missing path that a frame-dir list gave a frame count."""
    return os.path.isdir(record.path) or (record.num_frames is not None and not os.path.exists(record.path))


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise BadVideoError(path, "file not found")
    if os.path.isdir(path):
        raise BadVideoError(path, "is a directory, expected a video file")
    if os.path.getsize(path) == 0:
        raise BadVideoError(path, "zero-length file")


def trim_window(total: int, fps: float, start: Optional[float], end: Optional[float], path: str) -> tuple[int, int]:
    """Frames ``[first, first + n)`` of a ``total``-frame video at ``fps`` inside ``[start, end]`` seconds.

    ``end`` past the video's end is clamped to it; a window shorter than one frame keeps one frame;
    a window that starts after the last frame is a :class:`BadVideoError`.
    """
    if start is None and end is None:
        return 0, total
    if not fps or not math.isfinite(fps) or fps <= 0:
        raise BadVideoError(path, f"no usable frame rate ({fps!r}) to cut the instance {start}-{end} s")
    first = int(math.floor((start or 0.0) * fps))
    stop = total if end is None else min(total, int(math.ceil(end * fps)))
    if first >= total:
        raise BadVideoError(
            path, f"instance starts at {start} s, after the video's last frame ({total} frames at {fps:g} fps)"
        )
    return first, max(stop - first, 1)


class VideoSource:
    """An open video (or frame directory) restricted to a record's window; ``len()`` frames.

    Use as a context manager; ``read(indices)`` takes window-relative 0-based indices and returns
    ``uint8 [len(indices), H, W, 3]``. ``backend`` names the reader actually used.
    """

    backend: str = ""
    fallback_reason: Optional[str] = None

    def __init__(self, record: VideoRecord) -> None:
        self.record = record
        self.path = record.path
        self.first = 0
        self.length = 0
        self.fps: float = 0.0

    def __len__(self) -> int:
        return self.length

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the underlying reader."""

    def _set_window(self, total: int, fps: float) -> None:
        if total <= 0:
            raise BadVideoError(self.path, "no frames in the video stream")
        self.fps = fps
        self.first, self.length = trim_window(total, fps, self.record.start, self.record.end, self.path)

    def _absolute(self, indices: Sequence[int]) -> list[int]:
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        if not idx:
            raise ValueError(f"{self.path}: no frame indices to read")
        bad = [i for i in idx if not 0 <= i < self.length]
        if bad:
            raise ValueError(f"{self.path}: frame indices {bad[:5]} outside 0..{self.length - 1}")
        return [self.first + i for i in idx]

    def read(self, indices: Sequence[int]) -> np.ndarray:
        raise NotImplementedError


# --------------------------------------------------------------------------- decord
class DecordSource(VideoSource):
    backend = "decord"

    def __init__(self, record: VideoRecord, threads: int = DECORD_THREADS) -> None:
        super().__init__(record)
        _check_file(self.path)
        import decord

        self._pyav: Optional[PyAVSource] = None
        try:
            self._reader = decord.VideoReader(self.path, num_threads=threads)
            total = len(self._reader)
            fps = float(self._reader.get_avg_fps())
        except Exception as exc:  # decord raises RuntimeError / DECORDError for unreadable files
            raise BadVideoError(self.path, f"cannot be opened (decord: {_short_message(exc)})") from None
        self._set_window(total, fps)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        if self._pyav is not None:
            return self._pyav.read(indices)
        absolute = self._absolute(indices)
        try:
            frames = self._reader.get_batch(absolute).asnumpy()
        except Exception as exc:
            msg = _short_message(exc)
            if any(bug in str(exc) for bug in KNOWN_DECORD_BUGS):
                return self._fall_back(msg, indices)
            raise BadVideoError(self.path, f"decoding frames {absolute[:8]} failed (decord: {msg})") from None
        if frames.ndim != 4 or frames.shape[0] != len(absolute) or frames.shape[-1] != 3:
            raise BadVideoError(self.path, f"decord returned frames of shape {frames.shape}, expected [{len(absolute)},H,W,3]")
        return frames

    def _fall_back(self, reason: str, indices: Sequence[int]) -> np.ndarray:
        self.close()
        _record_fallback(self.path, reason)
        self._pyav = PyAVSource(self.record)
        self.fallback_reason = reason
        self.backend = "pyav (decord fallback)"
        if (self._pyav.first, self._pyav.length) != (self.first, self.length):
            raise BadVideoError(
                self.path,
                f"decord and PyAV disagree on the frame count ({self.length} vs {self._pyav.length}); "
                "the file is likely damaged",
            )
        return self._pyav.read(indices)

    def close(self) -> None:
        self._reader = None
        if self._pyav is not None:
            self._pyav.close()


# --------------------------------------------------------------------------- PyAV
_REFORMATTERS = threading.local()


def _rgb(frame) -> np.ndarray:
    """``frame.to_ndarray(format="rgb24")`` through this thread's reusable ``VideoReformatter``: the same
    pixels, without building a new swscale context for every frame (~0.3 ms of a 426x320 frame's 0.4)."""
    reformatter = getattr(_REFORMATTERS, "rgb", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _REFORMATTERS.rgb = VideoReformatter()
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


class PyAVSource(VideoSource):
    """PyAV reader; ``seek=False`` decodes sparsely from packets, ``seek=True`` seeks per wanted frame.

    ``seek=False`` ("pyav"): the container opened for the frame count stays open; the first ``read``
    demuxes every packet (no decoding) into memory, and each wanted frame is decoded from the last
    keyframe at or before it (in decoding order and in time), continuing forward when the next wanted
    frame has no keyframe in between. Packets of frames that are not wanted are decoded with
    ``skip_frame=NONREF`` (a frame no other frame references is skipped), wanted ones in full; frames
    are identified by the rank of their timestamp, i.e. the order in which straight decoding outputs
    them. ``sparse=False`` (or a stream whose packets cannot be indexed) decodes straight through from
    the first frame instead.

    With ``seek=True`` a wanted frame less than ``seek_gap_s`` seconds after the last decoded one is
    reached by decoding forward instead of seeking back to a keyframe.
    """

    backend = "pyav"

    def __init__(
        self,
        record: VideoRecord,
        seek: bool = False,
        seek_gap_s: float = 1.0,
        sparse: bool = True,
        threads: int = PYAV_THREADS,
    ) -> None:
        super().__init__(record)
        _check_file(self.path)
        self.seek = seek
        self.seek_gap_s = seek_gap_s
        self.sparse = sparse and not seek
        self.threads = threads
        if seek:
            self.backend = "pyav_seek"
        self._container = None
        self._packets: Optional[list] = None
        container = self._open()
        self._skip_nonref = container.streams.video[0].codec_context.name in SKIP_NONREF_CODECS
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            total = self._declared = int(stream.frames or 0)
            if total <= 0:  # container without a frame count: count the packets
                self._packets = [p for p in container.demux(stream) if p.size]
                total = len(self._packets)
            self._time_base = stream.time_base
            self._start_pts = int(stream.start_time or 0)
            self._set_window(total, fps)
        except BaseException:
            container.close()
            raise
        if self.sparse:
            self._container = container  # kept for the first read (demuxed there)
        else:
            container.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._packets = None

    def _open(self):
        import av

        try:
            container = av.open(self.path)
        except Exception as exc:
            raise BadVideoError(self.path, f"cannot be opened (PyAV: {_short_message(exc)})") from None
        if not container.streams.video:
            container.close()
            raise BadVideoError(self.path, "no video stream")
        container.streams.video[0].codec_context.thread_count = self.threads
        return container

    def read(self, indices: Sequence[int]) -> np.ndarray:
        absolute = self._absolute(indices)
        wanted = sorted(set(absolute))
        if self.seek:
            got = self._read_seek(wanted)
        else:
            got = self._read_sparse(wanted) if self.sparse else None
            if got is None:
                got = self._read_straight(wanted)
        return np.stack([got[i] for i in absolute])

    def _demux(self) -> Optional[list]:
        """Every non-empty packet of the video stream, in decoding order (None: demuxing failed)."""
        if self._container is None:
            self._container, self._packets = self._open(), None
        if self._packets is None:
            try:
                self._packets = [p for p in self._container.demux(self._container.streams.video[0]) if p.size]
            except Exception:  # noqa: BLE001 - a damaged file: straight decoding reports it
                return None
        return self._packets

    def _read_sparse(self, wanted: list[int]) -> Optional[dict[int, np.ndarray]]:
        """Wanted frames decoded from their keyframes; None when the packets cannot be indexed."""
        packets = self._demux()
        if not packets or (self._declared > 0 and len(packets) != self._declared):
            return None  # truncated, padded or miscounted: straight decoding gives the answer
        pts = [p.pts for p in packets]
        if any(t is None for t in pts) or len(set(pts)) != len(pts):
            return None
        if any(p.is_discard or p.is_corrupt for p in packets):  # e.g. cut by an edit list: not 1 packet = 1 frame
            return None
        if wanted[-1] >= len(packets):
            return None
        position = sorted(range(len(pts)), key=pts.__getitem__)  # frame index -> decoding position
        frame_of_pts = {pts[pos]: i for i, pos in enumerate(position)}
        keys = [j for j, p in enumerate(packets) if p.is_keyframe]
        want_pts = {pts[position[i]] for i in wanted}
        codec = self._container.streams.video[0].codec_context
        codec.skip_frame = "DEFAULT"
        skip = "NONREF" if self._skip_nonref else "DEFAULT"
        out: dict[int, np.ndarray] = {}
        start_pts = 0

        def start_of(i: int) -> Optional[int]:
            """Decoding position of the keyframe to start frame ``i`` from (None: no keyframe before it)."""
            q, t = position[i], pts[position[i]]
            for j in reversed(keys):
                if j <= q and pts[j] <= t:
                    return j
            return None

        def take(frames) -> None:
            for frame in frames:
                i = frame_of_pts.get(frame.pts)
                # frames before the start keyframe in time (open-GOP leading pictures) are not trusted
                if i is not None and frame.pts in want_pts and i not in out and frame.pts >= start_pts:
                    out[i] = _rgb(frame)

        def drain() -> None:
            take(codec.decode(None))
            codec.flush_buffers()

        mode = ["DEFAULT"]

        def feed(j: int) -> None:
            wanted_mode = "DEFAULT" if pts[j] in want_pts else skip
            if wanted_mode != mode[0]:
                codec.skip_frame = mode[0] = wanted_mode
            take(codec.decode(packets[j]))

        targets = sorted(wanted, key=position.__getitem__)
        fed, live = 0, False  # next packet to feed; whether the decoder holds a usable state
        try:
            for n, i in enumerate(targets):
                if i in out:
                    continue
                start = start_of(i)
                if start is None:
                    return None
                if not live or start >= fed:  # (re)start at the keyframe: nothing between is needed
                    if live:
                        drain()
                    fed, start_pts, live = start, pts[start], True
                while fed <= position[i]:
                    feed(fed)
                    fed += 1
                if i in out:
                    continue
                following = next((k for k in targets[n + 1 :] if k not in out), None)
                restart = None if following is None else start_of(following)
                if restart is None or restart >= fed:
                    drain()  # the next wanted frame restarts anyway: flush the reorder delay out
                    live = False
                else:  # decode on until the frame leaves the reorder buffer
                    while i not in out and fed < len(packets):
                        feed(fed)
                        fed += 1
                    if i not in out:
                        drain()
                        live = False
                if i not in out:
                    return None
        except Exception:  # noqa: BLE001 - straight decoding reports the damage (or reads it after all)
            return None
        finally:
            codec.skip_frame = "DEFAULT"
            self.close()
        return out

    def _read_straight(self, wanted: list[int]) -> dict[int, np.ndarray]:
        keep = set(wanted)
        last = wanted[-1]
        out: dict[int, np.ndarray] = {}
        count = 0
        with self._open() as container:
            stream = container.streams.video[0]
            try:
                for count, frame in enumerate(container.decode(stream)):
                    if count in keep:
                        out[count] = _rgb(frame)
                    if count >= last:
                        break
            except Exception as exc:
                raise BadVideoError(
                    self.path, f"decoding failed after {len(out)} wanted frame(s) (PyAV: {_short_message(exc)})"
                ) from None
        if len(out) < len(keep):
            missing = sorted(keep - set(out))
            raise BadVideoError(
                self.path, f"truncated: the stream ended before frame {missing[0]} (frames requested up to {last})"
            )
        return out

    def _pts_to_index(self, pts: int) -> int:
        return int(round(float((pts - self._start_pts) * self._time_base) * self.fps))

    def _read_seek(self, wanted: list[int]) -> dict[int, np.ndarray]:
        if not self.fps:
            raise BadVideoError(self.path, "no frame rate: cannot seek by timestamp")
        out: dict[int, np.ndarray] = {}
        with self._open() as container:
            stream = container.streams.video[0]
            decoder = None
            current = -1
            gap = max(1, int(self.seek_gap_s * self.fps))
            for target in wanted:
                if decoder is None or target <= current or target - current > gap:
                    pts = self._start_pts + int(round(target / self.fps / float(self._time_base)))
                    container.seek(pts, stream=stream, backward=True, any_frame=False)
                    decoder = container.decode(stream)
                    current = -1
                try:
                    while current < target:
                        frame = next(decoder)
                        if frame.pts is None:
                            raise BadVideoError(self.path, "frame without a timestamp: cannot seek")
                        current = self._pts_to_index(frame.pts)
                        if current == target:
                            out[target] = _rgb(frame)
                except StopIteration:
                    raise BadVideoError(self.path, f"truncated: the stream ended before frame {target}") from None
                except BadVideoError:
                    raise
                except Exception as exc:
                    raise BadVideoError(self.path, f"decoding near frame {target} failed (PyAV: {_short_message(exc)})") from None
                if target not in out:
                    raise BadVideoError(self.path, f"no frame with the timestamp of frame {target} (variable frame rate?)")
        return out


# --------------------------------------------------------------------------- frame directories
class FrameDirSource(VideoSource):
    """A directory of images ``frame_template.format(i + 1)``, ``record.num_frames`` of them (or counted)."""

    backend = "frames"

    def __init__(self, record: VideoRecord, frame_template: str = DEFAULT_FRAME_TEMPLATE) -> None:
        super().__init__(record)
        if record.is_trimmed:
            raise ValueError(f"{self.path}: start/end seconds need a video file; frame directories have no frame rate")
        self.template = frame_template
        if not os.path.isdir(self.path):
            raise BadVideoError(self.path, "frame directory not found")
        n = record.num_frames
        if n is None:
            n = _count_frames(self.path, frame_template)
            if n == 0:
                raise BadVideoError(self.path, f"no frames named like {frame_template.format(1)!r}")
        elif not os.path.isfile(self._frame_path(n - 1)):
            have = _count_frames(self.path, frame_template)
            raise BadVideoError(
                self.path, f"frame directory has {have} frame(s), fewer than the {n} listed ({self._frame_path(n - 1)} missing)"
            )
        self.first, self.length = 0, n

    def _frame_path(self, i: int) -> str:
        return os.path.join(self.path, self.template.format(i + 1))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        absolute = self._absolute(indices)
        cache: dict[int, np.ndarray] = {}
        for i in absolute:
            if i in cache:
                continue
            p = self._frame_path(i)
            try:
                with Image.open(p) as img:
                    cache[i] = np.asarray(img.convert("RGB"))
            except FileNotFoundError:
                raise BadVideoError(self.path, f"frame {os.path.basename(p)} missing") from None
            except (UnidentifiedImageError, OSError) as exc:
                raise BadVideoError(self.path, f"frame {os.path.basename(p)} unreadable ({_short_message(exc)})") from None
        shapes = {a.shape for a in cache.values()}
        if len(shapes) > 1:
            raise BadVideoError(self.path, f"frames of different sizes {sorted(shapes)}")
        return np.stack([cache[i] for i in absolute])


def _count_frames(path: str, template: str) -> int:
    """Consecutive frames ``template.format(1), template.format(2), ...`` present in ``path``."""
    names = set(os.listdir(path))
    n = 0
    while template.format(n + 1) in names:
        n += 1
    return n


def _short_message(exc: BaseException) -> str:
    """The last non-empty line of an exception's text (decord puts the actual error there)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else text


# --------------------------------------------------------------------------- public API
def open_video(
    record: VideoRecord, backend: str = "decord", frame_template: str = DEFAULT_FRAME_TEMPLATE
) -> VideoSource:
    """Open ``record`` with ``backend`` (ignored for frame directories). Raises :class:`BadVideoError`."""
    if is_frame_dir(record):
        return FrameDirSource(record, frame_template)
    if backend == "decord":
        return DecordSource(record)
    if backend == "pyav":
        return PyAVSource(record, seek=False)
    if backend == "pyav_seek":
        return PyAVSource(record, seek=True)
    raise ValueError(f"decode backend {backend!r}; expected one of {BACKENDS}")


def num_frames(record: VideoRecord, backend: str = "decord", frame_template: str = DEFAULT_FRAME_TEMPLATE) -> int:
    """Frames in the record's window (whole video, trimmed instance, or listed frame count)."""
    with open_video(record, backend, frame_template) as src:
        return len(src)


def decode_frames(
    record: VideoRecord,
    indices: Sequence[int],
    backend: str = "decord",
    frame_template: str = DEFAULT_FRAME_TEMPLATE,
) -> np.ndarray:
    """Frames ``indices`` (0-based, relative to the record's window) as ``uint8 [T, H, W, 3]`` RGB."""
    with open_video(record, backend, frame_template) as src:
        return src.read(indices)


def sample_and_decode(
    record: VideoRecord,
    choose: Callable[[int], np.ndarray],
    backend: str = "decord",
    frame_template: str = DEFAULT_FRAME_TEMPLATE,
) -> tuple[np.ndarray, np.ndarray, VideoSource]:
    """Open once, pick indices with ``choose(num_frames)``, decode them.

    Returns (frames ``uint8 [T, H, W, 3]``, indices ``[T]``, the closed source — for ``backend`` and
    ``fallback_reason``).
    """
    with open_video(record, backend, frame_template) as src:
        indices = np.asarray(choose(len(src)))
        frames = src.read(indices)
    return frames, indices, src
