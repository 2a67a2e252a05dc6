"""The true action window of a world video, for pictures (``bike.engine.figures``).

A world records the windows of its multi-label videos in the Charades files, but not those of the
single-action videos; every video is rendered from its own random stream
(``bike.world.generator.video_rng(seed, stream, index)``), so the window is found again by replaying
that stream (:func:`bike.world.generator.make_video`, in memory, a few milliseconds a video) from the
world's manifest (config and seed) and its plan. Nothing is written; a world whose manifest does not
give back its own config hash yields no windows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

#: File of a built world (``bike.world.build.MANIFEST``; not imported: this module stays light).
_MANIFEST = "manifest.json"


def world_root_of(path: str | Path, levels: int = 3) -> Optional[Path]:
    """The built world that holds ``path`` (a directory with a ``manifest.json`` at most ``levels``
    above it), or None."""
    p = Path(path).resolve()
    for cand in [p, *p.parents][: levels + 1]:
        if (cand / _MANIFEST).is_file():
            return cand
    return None


def _config(manifest: dict):
    from bike.world.config import WorldConfig

    fields = WorldConfig.__dataclass_fields__
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest.get("config", {}).items() if k in fields}
    return WorldConfig(**values)


def action_windows(world_root: str | Path, paths: Sequence[str | Path]) -> dict[str, dict]:
    """``{path: {"frames": T, "fps": f, "windows": [[start, end], ...]}}`` (frames ``[start, end)`` of
    the video's T frames, one window per action) for the given video files of the world at
    ``world_root``; files that are not videos of this world are left out."""
    from bike.world.dataset import plan_world
    from bike.world.generator import make_video, video_rng

    root = Path(world_root).resolve()
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
        cfg = _config(manifest)
        seed = int(manifest["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if cfg.content_hash(seed) != manifest.get("config_hash"):
        return {}  # another version of the world code: its streams may differ
    jobs = {j.rel_path: j for j in plan_world(cfg, seed).all_jobs}
    out: dict[str, dict] = {}
    for path in paths:
        try:
            rel = Path(path).resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        job = jobs.get(rel)
        if job is None:
            continue
        _, instances = make_video(video_rng(seed, job.stream, job.index), cfg, job.comps)
        out[str(path)] = {"frames": cfg.frames, "fps": cfg.fps,
                          "windows": [[int(i.start), int(i.end)] for i in instances]}
    return out
