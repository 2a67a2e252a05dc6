"""Checkpoints of a run directory (names and atomic writes: ``bike.rundir``).

One ``checkpoints/latest.pt`` holds everything needed to continue a run exactly: model, optimiser,
scheduler, grad scaler, position (epoch, iteration within the epoch, optimiser steps), the RNG states
(python, numpy, torch, CUDA when present), the training sampler's state and the resolved config.
``checkpoints/best.pt`` holds the model selected on validation, kept apart.

Every checkpoint is written atomically (``bike.rundir.atomic_write_torch``), so a crash never leaves
a truncated file under the final name. The checkpoint holds
only tensors and plain python values, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from bike.rundir import BEST, CHECKPOINT_DIR, LATEST, atomic_write_torch, remove_partial_writes, run_checkpoint


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
def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint dict atomically (see module docstring for the keys the train loop stores)."""
    return atomic_write_torch(path, state)


def remove_partial_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted checkpoint write left in ``directory``
    (``bike.rundir.remove_partial_writes``); returns what was removed."""
    return remove_partial_writes(directory)


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
        from bike.official import convert_official_state, infer_model_config, is_official_checkpoint, strip_ddp_prefix

        if is_official_checkpoint(state):  # the authors' released layout (bike.official): init_from may name it
            clip, head = strip_ddp_prefix(state["model_state_dict"]), strip_ddp_prefix(state["fusion_model_state_dict"])
            infer_model_config(clip, head, source=str(path))  # refuses heads it does not know
            return {"model": convert_official_state(clip, head), "official": True}
        raise ValueError(f"{path}: not a bikebench checkpoint (expected a dict with a 'model' entry)")
    return state


def resolve_init_checkpoint(init_from: str | os.PathLike) -> Path:
    """The checkpoint a run starts from: a file as given, or for a run directory its
    ``checkpoints/best.pt`` when present, else ``checkpoints/latest.pt``."""
    p = Path(init_from)
    if p.is_file():
        return p
    if p.is_dir():
        found = run_checkpoint(p)
        if found is not None:
            return found
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
