"""Checkpoints and atomic files of a run directory.

One ``checkpoints/latest.pt`` holds everything needed to continue a run exactly: model, optimiser,
scheduler, grad scaler, position (epoch, iteration within the epoch, optimiser steps), the RNG states
(python, numpy, torch, CUDA when present), the training sampler's state and the resolved config.
``checkpoints/best.pt`` holds the model selected on validation, kept apart.

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a crash never leaves a truncated file under the final name. The checkpoint holds
only tensors and plain python values, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

LATEST = "latest.pt"
BEST = "best.pt"
CHECKPOINT_DIR = "checkpoints"


# ------------------------------------------------------------------------------ atomic writes
def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` through ``write(file)`` on a temporary sibling, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


# ------------------------------------------------------------------------------ RNG states
def capture_rng_state() -> dict:
    """RNG states of python, numpy (legacy global), torch CPU and every CUDA device, as plain values."""
    np_state = np.random.get_state()
    state = {
        "python": _tuples_to_lists(random.getstate()),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_lists_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples_to_lists(x: Any) -> Any:
    return [_tuples_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _lists_to_tuples(x: Any) -> Any:
    return tuple(_lists_to_tuples(v) for v in x) if isinstance(x, list) else x


# ------------------------------------------------------------------------------ checkpoints
def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint dict atomically (see module docstring for the keys the train loop stores)."""
    return atomic_torch_save(state, path)


def remove_partial_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``directory``
    (``.<name>.<random>.tmp``); returns what was removed."""
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    for p in sorted(d.glob(".*.tmp")):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, foreign pickle, ...
        raise ValueError(f"{path}: not a readable bikebench checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a bikebench checkpoint (expected a dict with a 'model' entry)")
    return state


def resolve_init_checkpoint(init_from: str | os.PathLike) -> Path:
    """The checkpoint a run starts from: a file as given, or for a run directory its
    ``checkpoints/best.pt`` when present, else ``checkpoints/latest.pt``."""
    p = Path(init_from)
    if p.is_file():
        return p
    if p.is_dir():
        for name in (BEST, LATEST):
            cand = checkpoint_dir(p) / name
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"init_from={str(init_from)!r}: run directory has no {CHECKPOINT_DIR}/{BEST} or {LATEST}")
    raise FileNotFoundError(f"init_from={str(init_from)!r}: no such checkpoint file or run directory")


def init_run_dir(init_from: str | os.PathLike) -> Optional[Path]:
    """The run directory behind ``init_from`` (the directory itself, or the run owning a checkpoint file)."""
    p = Path(init_from)
    if p.is_dir():
        return p
    if p.is_file() and p.parent.name == CHECKPOINT_DIR:
        return p.parent.parent
    return None
