"""``bikebench data prepare``: re-encode a folder of videos for the recipe's sparse frame access.

Every video under ``SRC`` (``VIDEO_EXTENSIONS``) is re-encoded (PyAV: libav + libx264, no ffmpeg
binary needed) to ``DST/<same relative path>.mp4``: H.264 (yuv420p, no audio), its short side scaled to
``short_side`` (320: the released ``*_se320`` lists) keeping the aspect ratio, and a keyframe every
``keyint`` frames with no scene-cut keyframes (x264 ``keyint=K:min-keyint=K:scenecut=0``), so that
reaching any sampled frame decodes at most ``keyint - 1`` frames after a seek; ``+faststart`` puts the
index first. One encoder thread per task;
the tasks run as ONE submitit job array (``local`` processes, ``slurm``, ``debug``).

Never overwrites the source: ``DST`` may not be ``SRC`` or inside it, and each output is written to a
temporary sibling and renamed into place when the encode succeeds. Resumable: a finished output is
recorded (source size + mtime, settings, output size + mtime) in ``DST/.bikebench-prepare.json``;
a rerun skips an output whose record matches, and redoes anything else (a partial or replaced file,
a changed source, other settings). Tasks record as they go (``DST/.bikebench-prepare.d/``), so an
interrupted prepare keeps what it finished.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bike.config import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
MANIFEST = ".bikebench-prepare.json"
DEFAULT_SHORT_SIDE = 320
#: Keyframe interval (frames): a TSN sample of 8 frames from a 10 s, 30 fps clip lands ~37 frames apart;
#: every 8 frames the loader reaches 47 clips/s per core with the pyav decoder (every 16: 34-37; docs/data.md).
DEFAULT_KEYINT = 8
RECORD_EVERY = 10
DEFAULT_TIMEOUT_MIN = 240.0


@dataclass(frozen=True)
class PrepareSettings:
    short_side: int = DEFAULT_SHORT_SIDE
    keyint: Optional[int] = DEFAULT_KEYINT  # None: x264's default (250, scene cuts on): the plain re-encode
    crf: int = 23
    preset: str = "veryfast"
    threads: int = 1  # 0: x264 picks (every core)

    def x264_options(self) -> dict[str, str]:
        opts = {"crf": str(self.crf), "preset": self.preset}
        if self.keyint:
            opts["x264-params"] = f"keyint={self.keyint}:min-keyint={self.keyint}:scenecut=0"
        return opts


#: The plain re-encode the benchmark compares with: the same short side, x264's defaults otherwise.
PLAIN = PrepareSettings(keyint=None, preset="medium", threads=0)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` and the aspect ratio kept (even, for yuv420p)."""
    if width <= height:
        w, h = short_side, height * short_side / width
    else:
        w, h = width * short_side / height, short_side
    even = lambda v: max(2, int(round(v / 2)) * 2)  # noqa: E731
    return even(w), even(h)


def _fp(path: str) -> Optional[list[int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def find_videos(src: Path) -> list[str]:
    """Relative paths of the videos under ``src`` (sorted; hidden entries skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS):
                out.append(os.path.relpath(os.path.join(dirpath, name), src))
    return sorted(out)


def output_name(rel: str) -> str:
    return os.path.splitext(rel)[0] + ".mp4"


def encode_one(src: str, out: str, settings: PrepareSettings) -> Optional[str]:
    """Re-encode ``src`` to ``out`` (PyAV's libav + libx264) through a temporary sibling renamed into place;
    None on success, else why it failed."""
    import av

    from bike.data.decode import _short_message

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{secrets.token_hex(4)}.tmp.mp4")
    frames = 0
    try:
        with av.open(src) as inp:
            if not inp.streams.video:
                return "no video stream"
            ist = inp.streams.video[0]
            ist.thread_type = "AUTO" if settings.threads != 1 else "SLICE"
            rate = ist.average_rate or ist.guessed_rate or 25
            with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
                ost = None
                for frame in inp.decode(ist):
                    if ost is None:
                        w, h = scaled_size(frame.width, frame.height, settings.short_side)
                        ost = container.add_stream("libx264", rate=rate)
                        ost.width, ost.height, ost.pix_fmt = w, h, "yuv420p"
                        ost.options = settings.x264_options()
                        ost.codec_context.thread_count = settings.threads
                        if settings.keyint:
                            ost.codec_context.gop_size = settings.keyint
                    img = frame.reformat(width=ost.width, height=ost.height, format="yuv420p")
                    img.pts, img.time_base = frames, 1 / Fraction(rate)  # constant frame rate, from 0
                    img.pict_type = 0  # NONE: the source's keyframes do not force the output's
                    for packet in ost.encode(img):
                        container.mux(packet)
                    frames += 1
                if ost is None:
                    return "the video stream decodes to no frames"
                for packet in ost.encode():
                    container.mux(packet)
        os.replace(tmp, out)
        return None
    except Exception as exc:  # noqa: BLE001 - a bad source is reported, the others go on
        return f"re-encoding failed after {frames} frame(s) ({type(exc).__name__}: {_short_message(exc)})"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class PrepareShard:
    """One task: re-encode ``items`` (relative paths) in order, recording each result in a fragment."""

    def __init__(self, src: str, dst: str, items: list[str], settings: PrepareSettings, fragment: str) -> None:
        self.src, self.dst, self.items, self.settings, self.fragment = src, dst, items, settings, fragment

    def _flush(self, rows: dict[str, Any]) -> None:
        from bike.rundir import atomic_write_text

        Path(self.fragment).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(self.fragment), json.dumps(rows))

    def __call__(self) -> dict[str, Any]:
        rows: dict[str, Any] = {}
        for i, rel in enumerate(self.items, start=1):
            src = os.path.join(self.src, rel)
            out = os.path.join(self.dst, output_name(rel))
            src_fp = _fp(src)
            error = encode_one(src, out, self.settings)
            rows[rel] = {"src": src_fp, "settings": asdict(self.settings), "out": None if error else _fp(out),
                         "error": error}
            if i % RECORD_EVERY == 0:
                self._flush(rows)
        self._flush(rows)
        return rows


@dataclass
class PrepareReport:
    videos: int
    encoded: int
    skipped: int
    failed: dict[str, str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed


def _check_dirs(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise ConfigError(f"command line: SRC {src}: not a directory; expected the folder of videos to re-encode")
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise ConfigError(f"command line: DST {dst}: is SRC or inside it; expected another folder "
                          "(the source is never overwritten)")
    if d.exists() and not d.is_dir():
        raise ConfigError(f"command line: DST {dst}: is a file; expected a folder")


def _load_manifest(dst: Path) -> dict[str, Any]:
    from bike.rundir import read_json

    try:
        raw = read_json(dst / MANIFEST)
    except (OSError, ValueError):
        raw = None
    done = dict((raw or {}).get("videos", {})) if isinstance(raw, dict) else {}
    frag_dir = dst / (MANIFEST[:-5] + ".d")
    if frag_dir.is_dir():
        for frag in sorted(frag_dir.glob("*.json")):
            try:
                done.update(json.loads(frag.read_text()))
            except (OSError, ValueError):
                continue
    return done


def _save_manifest(dst: Path, done: dict[str, Any]) -> None:
    from bike.rundir import atomic_write_json, file_lock

    with file_lock(dst / (MANIFEST + ".lock")):
        atomic_write_json(dst / MANIFEST, {"version": 1, "videos": done})
    frag_dir = dst / (MANIFEST[:-5] + ".d")
    if frag_dir.is_dir():
        shutil.rmtree(frag_dir, ignore_errors=True)


def _is_done(entry: Optional[dict[str, Any]], src: str, out: str, settings: PrepareSettings) -> bool:
    return bool(entry) and not entry.get("error") and entry.get("settings") == asdict(settings) \
        and entry.get("src") == _fp(src) and entry.get("out") is not None and entry.get("out") == _fp(out)


def prepare(src: str | Path, dst: str | Path, settings: PrepareSettings = PrepareSettings(), executor: str = "local",
            tasks: int = 1, resources: Any = None, poll_s: float = 0.5,
            log: Callable[[str], None] = print) -> PrepareReport:
    """Re-encode every video under ``src`` not yet done into ``dst`` (see the module docstring)."""
    src, dst = Path(src), Path(dst)
    _check_dirs(src, dst)
    start = time.monotonic()
    videos = find_videos(src)
    dst.mkdir(parents=True, exist_ok=True)
    done = _load_manifest(dst)
    # leftovers of an interrupted encode never carry a final name; remove them
    for tmp in dst.rglob(".*.tmp.mp4"):
        tmp.unlink(missing_ok=True)
    todo = [v for v in videos if not _is_done(done.get(v), str(src / v), str(dst / output_name(v)), settings)]
    if todo:
        n = max(1, min(tasks, len(todo)))
        frag_dir = dst / (MANIFEST[:-5] + ".d")
        token = f"{os.getpid()}-{secrets.token_hex(3)}"
        shards = [PrepareShard(str(src), str(dst), todo[i::n], settings, str(frag_dir / f"{token}-{i}.json"))
                  for i in range(n)]
        if executor == "inline":
            results = [s() for s in shards]
        else:
            results = _run_array(shards, executor, resources, dst, poll_s, log)
        for rows in results:
            done.update(rows)
    _save_manifest(dst, done)
    failed = {v: done[v]["error"] for v in todo if (done.get(v) or {}).get("error") or not (done.get(v) or {}).get("out")}
    for v in failed:
        failed[v] = failed[v] or "not encoded (its task failed; see the job log)"
    return PrepareReport(len(videos), len(todo) - len(failed), len(videos) - len(todo), failed, time.monotonic() - start)


def _run_array(shards: Sequence[PrepareShard], executor: str, resources: Any, dst: Path, poll_s: float,
               log: Callable[[str], None]) -> list[dict[str, Any]]:
    from harness.executor import executor_parameters, invocation_folder, make_executor
    from harness.spec import ResourceSpec

    res = resources or ResourceSpec(timeout_min=DEFAULT_TIMEOUT_MIN)
    if res.timeout_min is None:
        res = res.merged(ResourceSpec(timeout_min=DEFAULT_TIMEOUT_MIN))
    params = executor_parameters(executor, res, "bikebench-prepare")
    folder = invocation_folder(dst / ".bikebench-prepare-jobs")
    ex = make_executor(executor, folder / "%j", res, params)
    with ex.batch():
        jobs = [ex.submit(s) for s in shards]
    log(f"data prepare: {len(shards)} task(s) submitted as one {executor} job array; logs under {folder}")
    if executor != "debug":
        while not all(j.done() for j in jobs):
            time.sleep(poll_s)
    out = []
    for index, (job, shard) in enumerate(zip(jobs, shards)):
        try:
            out.append(job.result())
        except Exception as exc:  # noqa: BLE001 - keep what the task recorded; the rest counts as failed
            log(f"data prepare: task {index} (job {job.job_id}) failed: {str(exc).strip().splitlines()[-1:]} "
                f"(log: {job.paths.stderr})")
            try:
                out.append(json.loads(Path(shard.fragment).read_text()))
            except (OSError, ValueError):
                out.append({})
    return out
