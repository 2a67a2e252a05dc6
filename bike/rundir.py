"""The run-directory contract: the names of a run directory's files, and the one atomic writer.

```
<run_dir>/
  config.yaml             resolved RunConfig (the driver writes it, else the engine)
  meta.json               code version, spec/variant/scale that asked for the run (harness driver)
  state.json              job-side lifecycle (harness)
  submissions.json        every submission of the run (harness driver)
  log.txt, metrics.jsonl  the engine's log and one JSON object a line
  checkpoints/latest.pt   everything needed to resume exactly
  checkpoints/best.pt     the model selected on validation
  cache/<split>/          cached evaluation scores (``bike.engine.caches``)
  cache/attributes.json   ranked attribute phrases per video id
  result.json             written last by the engine
```

Atomic writes: the content goes to a temporary sibling ``.<name>.<random>.tmp`` (created with the
process's usual permissions), is flushed and ``fsync``-ed, then ``os.replace``-d onto the final name,
so a reader sees the old file or the whole new one and a crash never leaves a truncated file under
the final name; :func:`remove_partial_writes` deletes the temporaries an interrupted write left.
Bytes, text, JSON, NumPy arrays and torch objects all go through :func:`atomic_path`. This module
imports neither torch nor numpy at import time (torch only inside :func:`atomic_write_torch`).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
STATE_FILE = "state.json"
SUBMISSIONS_FILE = "submissions.json"
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
BEST = "best.pt"
CACHE_DIR = "cache"
ATTRIBUTES_FILE = "attributes.json"
#: pictures of a run (PNG, and a JSON beside each with the numbers drawn): logged to MLflow as artifacts
FIGURES_DIR = "figures"

#: Suffix of the temporary sibling an atomic write goes through (``.<name>.<random>.tmp``).
TMP_SUFFIX = ".tmp"


# ------------------------------------------------------------------------------ paths
def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """``<run_dir>/checkpoints``."""
    return Path(run_dir) / CHECKPOINT_DIR


def run_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    """The run's model: ``checkpoints/best.pt`` when present, else ``checkpoints/latest.pt``, else None."""
    for name in (BEST, LATEST):
        cand = checkpoint_dir(run_dir) / name
        if cand.is_file():
            return cand
    return None


def cache_dir(run_dir: str | os.PathLike) -> Path:
    """``<run_dir>/cache``."""
    return Path(run_dir) / CACHE_DIR


# ------------------------------------------------------------------------------ atomic writes
def _temporary_sibling(path: Path) -> Path:
    """Create ``.<name>.<random>.tmp`` next to ``path`` (new, empty, usual permissions)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write by name; on success it is ``fsync``-ed and
    moved onto ``path``, on any error it is deleted (an existing ``path`` stays as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.is_file() else 0
        free = _free_bytes(path.parent)  # before the temporary goes: what the write met
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and _out_of_space(exc, free):
            raise NoSpaceError(
                errno.ENOSPC,
                f"{path}: writing it failed ({type(exc).__name__}: {str(exc).strip()[:200]}) with "
                f"{written / 2**20:.0f} MiB written and {free / 2**20:.0f} MiB free on its filesystem: no space "
                "left; free some, or point --results (the run directories) at a larger filesystem; a rerun resumes "
                "from the last checkpoint that was written",
            ) from exc
        raise


class NoSpaceError(OSError):
    """A run-directory file could not be written because its filesystem is full (names the file)."""


#: Below this many free bytes a failed write is taken for a full filesystem, whatever the writer raised
#: (``torch.save`` reports a short write as ``RuntimeError: ... unexpected pos``).
LOW_SPACE_BYTES = 64 * 2**20


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return -1


def _out_of_space(exc: BaseException, free: int) -> bool:
    """``exc`` (or an exception it chains) is ENOSPC/EDQUOT, or the filesystem had almost no room left."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return 0 <= free < LOW_SPACE_BYTES


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` atomically through ``write(file)`` (``file`` opened with ``mode``)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            write(f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback of the engine's files: NumPy scalars/arrays and paths; else TypeError."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] = json_default) -> Path:
    """``obj`` as indented, key-sorted JSON with a final newline (``default``: see :func:`json_default`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=default) + "\n")


def atomic_write_npy(path: str | os.PathLike, array: Any) -> Path:
    """One array as ``.npy`` (``numpy.save``)."""
    import numpy as np

    return atomic_write(path, lambda f: np.save(f, array))


def atomic_write_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """Named arrays as an uncompressed ``.npz`` (``numpy.savez``; no suffix is added to ``path``)."""
    import numpy as np

    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_partial_writes(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries an interrupted atomic write left in ``directory``
    (``.<name>.<random>.tmp``); returns what was removed."""
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    for p in sorted(d.glob(f".*{TMP_SUFFIX}")):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


# ------------------------------------------------------------------------------ reading
def read_json(path: str | os.PathLike) -> Optional[Any]:
    """The parsed JSON file, or None when it is missing or unreadable (a file still being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive POSIX lock on the file ``path`` (created) while the block runs: serialises
    processes on one machine and, with lockd, across NFS nodes (the world build, the shared attribute
    store, the grid workers of a study)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
