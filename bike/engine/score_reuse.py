"""Reuse another run's cached video-branch scores when they are provably the ones this run would compute.

An evaluation-only run (Table 6c/6d, the untrained attributes branch put on a trained video branch) and
a stage-2 run (attributes branch trained on a frozen video branch) score the videos of a split with the
very video branch their ``init_from`` run already evaluated. Rather than decode and forward every video
again, :func:`evaluate_split <bike.engine.eval_loop.evaluate_split>` asks :func:`find_reusable` for a
cache whose *video-side key* equals its own, and copies its scores.

The key (:func:`video_side_key`) is a SHA-256 over everything the video-branch scores depend on:

* the source code of the ``bike`` package (any change to it is a miss),
* the weights of the model except the attributes branch and the loss's logit scale, bit for bit,
* the class names, the split's records (ids, paths, labels, frame counts, segments),
* the views, the scoring mode (``video``/``frame``), whether frame embeddings are kept,
* the ``data``, ``model`` and ``eval`` sections of the config, the precision and the profile.

Fields that cannot change the video scores (``attributes``, ``fusion``, ``loss``, the rest of
``train``, ``stage``, ``seed``, ``name``, ``init_from``) stay out, so a run differing from its source
only in those reuses the source's scores. The key is written into every cache's manifest
(``extra.video_side_key``); a cache without one is never reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from bike.config import RunConfig
from bike.data.lists import VideoRecord

#: Bump when the key's recipe changes.
KEY_FORMAT = 1
#: State-dict prefixes excluded from the weights digest: they never touch the cached video-branch
#: scores (the attributes branch; the training loss's logit scale — cached logits are unscaled).
NON_VIDEO_PREFIXES = ("attributes.", "logit_scale.")
#: Manifest field (``extra``) holding the key.
KEY_FIELD = "video_side_key"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of every ``.py`` file of the ``bike`` package (path and content), computed once per process."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def weights_digest(model: torch.nn.Module, exclude: Sequence[str] = NON_VIDEO_PREFIXES) -> str:
    """SHA-256 of ``model``'s state dict (names, dtypes, shapes, bytes) without the ``exclude`` prefixes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if any(name.startswith(p) for p in exclude):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def records_digest(records: Sequence[VideoRecord]) -> str:
    """SHA-256 of the records in order (what is decoded and how it is labelled)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.video_id, str(r.path), r.label, r.num_frames, r.start, r.end], default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def video_side_key(
    config: RunConfig,
    model: torch.nn.Module,
    split: str,
    records: Sequence[VideoRecord],
    class_names: Sequence[str],
    views: tuple[int, int],
    mode: str,
    collect_frames: bool,
) -> str:
    """The identity of a split's video-branch scores (see the module docstring)."""
    payload = {
        "format": KEY_FORMAT,
        "code": code_digest(),
        "weights": weights_digest(model),
        "classes": list(class_names),
        "records": records_digest(records),
        "split": split,
        "views": list(views),
        "mode": mode,
        "collect_frames": bool(collect_frames),
        "data": config.data.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "eval": config.eval.model_dump(mode="json"),
        "precision": config.train.precision,
        "profile": config.profile,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def find_reusable(key: str, split: str, run_dirs: Sequence[Optional[str | Path]]):
    """The first complete cache of ``split`` under ``run_dirs`` whose key is ``key`` (a
    :class:`bike.engine.caches.ScoreCache`), or None."""
    from bike.engine.caches import MANIFEST, read_cache, split_cache_dir

    for run_dir in run_dirs:
        if run_dir is None:
            continue
        directory = split_cache_dir(run_dir, split)
        manifest = directory / MANIFEST
        if not manifest.is_file():
            continue
        try:
            if json.loads(manifest.read_text()).get("extra", {}).get(KEY_FIELD) != key:
                continue
            return read_cache(directory, mmap=False)
        except (OSError, ValueError, KeyError):  # a torn or foreign cache is only a miss
            continue
    return None
