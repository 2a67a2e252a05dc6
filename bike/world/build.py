"""Build a ToyKinetics world once: videos, lists, lexicons, the pretrained tiny CLIP, a manifest.

``build_world(root, size, seed)`` is idempotent: the manifest (``<root>/manifest.json``) records the
hash of the world's config and seed, and a rerun whose hash matches returns at once. The manifest is
removed before a build starts and written (atomically) only after everything else, so a build that
crashes never leaves a world that looks complete. Concurrent builds of one root are serialised by a
file lock. The checkpoint's name carries the hash (``clip/<model>-<hash>.pt``), so it is reused by a
rebuild of the same world after a crash.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from bike.rundir import atomic_write_text
from bike.world.config import Size, WorldConfig, settings_of, world_config
from bike.world.dataset import LEXICON_DIR, LIST_DIR, VIDEO_DIR, plan_world, write_text_files, write_videos

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "bikebench-world/1"
LOCK = ".build.lock"
CLIP_DIR = "clip"
#: Environment variable naming the default world root (else ``results/world`` under the working directory).
ROOT_ENV = "BIKEBENCH_WORLD"
#: Families a world serves and the dataset name each gets in DataConfig.
FAMILIES: dict[str, str] = {
    "general": "world",
    "zero_shot": "world_novel",
    "few_shot": "world_novel",
    "multi_label": "world_multilabel",
}
#: Build with a second process writing videos while the main one pretrains, above this many videos.
PARALLEL_MIN_VIDEOS = 200


class WorldError(RuntimeError):
    """A world that cannot be built or read; the message names the file and what was expected."""


def default_root() -> Path:
    """``$BIKEBENCH_WORLD`` or ``./results/world``."""
    return Path(os.environ.get(ROOT_ENV) or Path("results") / "world")


@dataclass(frozen=True)
class WorldInfo:
    """A built world: absolute paths of its files, what a BIKE run on it uses, and its measurements.

    ``metrics`` holds the tiny CLIP's accuracies measured at build time (top-1, fractions): zero-shot on
    the held-out (novel) compositions and on the general validation split, frame-level (per-frame
    softmax averaged) and video-level (mean frame embedding), a linear probe, and the chance levels.
    """

    root: Path
    size: str
    seed: int
    config_hash: str
    config: dict
    model_name: str
    checkpoint: Path
    frames: int
    resolution: int
    prompt: str
    layout: dict
    counts: dict
    metrics: dict
    timings: dict = field(default_factory=dict)
    #: SHA-256 of the tiny CLIP's checkpoint: with ``config_hash``, the world's identity (its numbers
    #: depend on the CPU kernels that pretrained it; see ``bike.numerics``).
    checkpoint_sha256: str = ""
    #: The CPU numerics the checkpoint was pretrained with (``bike.numerics.describe``).
    numerics: dict = field(default_factory=dict)
    #: The ``WorldConfig`` fields the build set beyond the size preset (``bikebench world build --set``).
    settings: dict = field(default_factory=dict)
    #: With ``WorldConfig.backbone_step``: the CLIP after that many pretraining steps, the runs' backbone
    #: (``checkpoint``, the final CLIP, is then the attribute generator only); None: one CLIP for both.
    backbone_checkpoint: Optional[Path] = None
    backbone_checkpoint_sha256: str = ""

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two worlds give the same numbers: size, seed, config hash, checkpoint SHA-256 (and
        the backbone checkpoint's, for a world whose backbone is a pretraining snapshot)."""
        out = {"size": self.size, "seed": self.seed, "config_hash": self.config_hash,
               "checkpoint_sha256": self.checkpoint_sha256}
        if self.backbone_checkpoint is not None:
            out["backbone_checkpoint_sha256"] = self.backbone_checkpoint_sha256
        return out

    @property
    def run_checkpoint(self) -> Path:
        """The CLIP a run starts from (``model.pretrained``) and whose text tower encodes the attributes
        branch's texts: the backbone snapshot when there is one, else the world's CLIP."""
        return self.backbone_checkpoint or self.checkpoint

    @property
    def generator_checkpoint(self) -> Optional[Path]:
        """The attribute generator's weights when they are not the run's (a backbone snapshot world), else None."""
        return self.checkpoint if self.backbone_checkpoint is not None else None

    # ------------------------------------------------------------------ paths
    def path(self, key: str) -> Path:
        """Absolute path of a layout entry (e.g. ``general_train``, ``lexicon_world``)."""
        if key not in self.layout:
            raise KeyError(f"world layout has no {key!r}; expected one of {sorted(self.layout)}")
        return self.root / self.layout[key]

    @property
    def video_root(self) -> Path:
        return self.path("video_root")

    @property
    def lexicons(self) -> dict[str, Path]:
        """``world`` (the analogue of the Kinetics-400 names) and ``world_objects`` (of ImageNet-1K)."""
        return {"world": self.path("lexicon_world"), "world_objects": self.path("lexicon_objects")}

    @property
    def class_names(self) -> dict[str, list[str]]:
        """Class names of the general, novel and multi-label datasets (read from the class files)."""
        out = {}
        for key, file in (("general", "general_classes"), ("novel", "novel_classes")):
            out[key] = [line.split(",", 1)[1] for line in self.path(file).read_text().splitlines()[1:] if line]
        out["multi_label"] = [l.split(" ", 1)[1] for l in self.path("multilabel_classes").read_text().splitlines() if l]
        return out

    # ------------------------------------------------------------------ config fragments
    def data_config(self, family: str) -> dict[str, Any]:
        """``bike.config.DataConfig`` field values for ``family``: general, zero_shot, few_shot, multi_label."""
        if family not in FAMILIES:
            raise ValueError(f"world family: got {family!r}; expected one of {sorted(FAMILIES)}")
        p = lambda key: str(self.path(key))  # noqa: E731
        base: dict[str, Any] = {"dataset": FAMILIES[family], "format": "video_list", "root": p("video_root"),
                                "multi_label": False}
        if family == "general":
            return {**base, "train_list": p("general_train"), "val_list": p("general_val"),
                    "test_list": p("general_val"), "class_file": p("general_classes")}
        if family == "zero_shot":
            return {**base, "train_list": None, "val_list": p("novel_val"), "test_list": p("novel_val"),
                    "class_file": p("novel_classes")}
        if family == "few_shot":
            return {**base, "train_list": p("novel_train"), "val_list": p("novel_val"), "test_list": p("novel_val"),
                    "class_file": p("novel_classes")}
        return {**base, "format": "charades", "root": p("multilabel_root"), "train_list": p("multilabel_train"),
                "val_list": p("multilabel_test"), "test_list": p("multilabel_test"),
                "class_file": p("multilabel_classes"), "multi_label": True}

    def model_config(self) -> dict[str, Any]:
        """``ModelConfig`` field values: the tiny CLIP, its checkpoint, frames, resolution."""
        return {"backbone": self.model_name, "pretrained": str(self.run_checkpoint), "frames": self.frames,
                "resolution": self.resolution}

    def attributes_config(self, lexicon: str = "world") -> dict[str, Any]:
        """``AttributesConfig`` field values: the lexicon file, the world's final CLIP as the generator and
        the run's CLIP as the text encoder."""
        if lexicon not in self.lexicons:
            raise ValueError(f"world lexicon: got {lexicon!r}; expected one of {sorted(self.lexicons)}")
        return {"lexicon": str(self.lexicons[lexicon]), "generator_backbone": self.model_name,
                "generator_pretrained": str(self.checkpoint), "text_encoder": self.model_name,
                "text_encoder_pretrained": str(self.run_checkpoint)}

    def config_overrides(self, family: str, lexicon: str = "world") -> dict[str, Any]:
        """Nested RunConfig sections (data, model, attributes) for a run of ``family`` on this world."""
        return {"data": self.data_config(family), "model": self.model_config(),
                "attributes": self.attributes_config(lexicon)}

    # ------------------------------------------------------------------ manifest
    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT, "size": self.size, "seed": self.seed, "config_hash": self.config_hash,
            "config": self.config, "model": self.model_name, "checkpoint": str(self.checkpoint.relative_to(self.root)),
            "frames": self.frames, "resolution": self.resolution, "prompt": self.prompt, "layout": self.layout,
            "counts": self.counts, "metrics": self.metrics, "timings": self.timings,
            "checkpoint_sha256": self.checkpoint_sha256, "numerics": self.numerics,
            **({"settings": self.settings} if self.settings else {}),
            **({"backbone_checkpoint": str(self.backbone_checkpoint.relative_to(self.root)),
                "backbone_checkpoint_sha256": self.backbone_checkpoint_sha256} if self.backbone_checkpoint else {}),
        }

    @classmethod
    def from_manifest(cls, root: Path, m: dict[str, Any]) -> "WorldInfo":
        root = Path(root).resolve()
        try:
            return cls(
                root=root, size=m["size"], seed=int(m["seed"]), config_hash=m["config_hash"], config=m["config"],
                model_name=m["model"], checkpoint=root / m["checkpoint"], frames=int(m["frames"]),
                resolution=int(m["resolution"]), prompt=m["prompt"], layout=dict(m["layout"]), counts=m["counts"],
                metrics=m["metrics"], timings=m.get("timings", {}),
                checkpoint_sha256=m.get("checkpoint_sha256", ""), numerics=m.get("numerics", {}),
                settings=settings_of(m),
                backbone_checkpoint=root / m["backbone_checkpoint"] if m.get("backbone_checkpoint") else None,
                backbone_checkpoint_sha256=m.get("backbone_checkpoint_sha256", ""),
            )
        except KeyError as exc:
            raise WorldError(f"{root / MANIFEST}: field {exc.args[0]!r} missing; expected a manifest written by build_world") from None


def read_manifest(root: Path) -> Optional[dict[str, Any]]:
    """The manifest of ``root``, or None when there is none (no world, or an unfinished build)."""
    path = Path(root) / MANIFEST
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise WorldError(f"{path}: not valid JSON ({exc}); delete it or rebuild with force=True") from None
    if m.get("format") != MANIFEST_FORMAT:
        raise WorldError(f"{path}: field 'format': got {m.get('format')!r}; expected {MANIFEST_FORMAT!r}")
    return m


def load_world(root: str | os.PathLike) -> WorldInfo:
    """The world built at ``root`` (no building); fails when there is none."""
    root = Path(root)
    m = read_manifest(root)
    if m is None:
        raise WorldError(f"{root / MANIFEST}: not found; expected a built world (python -m bike.world build --root {root})")
    return WorldInfo.from_manifest(root, m)


def _locked(root: Path):
    from bike.rundir import file_lock

    return file_lock(root / LOCK)


def _describe_settings(settings: dict[str, Any]) -> str:
    return " ".join(f"--set {k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}"
                    for k, v in sorted(settings.items())) or "no --set"


def _refuse_other_world(root: Path, size: str, seed: int, settings: Optional[dict[str, Any]] = None) -> None:
    """Raise when ``root`` holds a finished world of another size, seed or settings: it is never replaced
    silently (a world of the same size, seed and settings built by an older bikebench is rebuilt in place)."""
    m = read_manifest(root)
    if m is None:
        return
    if (m.get("size"), m.get("seed")) == (size, seed):
        theirs, ours = settings_of(m), dict(settings or {})
        if theirs == ours or _same_config(size, theirs, ours):
            return
        raise WorldError(
            f"{root / MANIFEST}: {root} holds the {size!r} world of seed {seed} built with "
            f"{_describe_settings(theirs)}; this command asks for it with {_describe_settings(ours)}. Use "
            f"another directory (--root / --world-root), or replace it with `bikebench world build --force`; "
            f"nothing was deleted"
        )
    raise WorldError(
        f"{root / MANIFEST}: {root} holds the {m.get('size')!r} world of seed {m.get('seed')} (config "
        f"{m.get('config_hash')}); this command asks for the {size!r} world of seed {seed}. Use that world "
        f"(--world-size {m.get('size')} --world-seed {m.get('seed')}, or no --world-seed), point at another "
        f"directory (--results DIR, whose world is DIR/world: a results directory holds the runs and tables of "
        f"one world; or --world-root), or replace it with `bikebench world build --force --root {root} "
        f"--size {size} --seed {seed}`; nothing was deleted"
    )


def _same_config(size: str, theirs: dict[str, Any], ours: dict[str, Any]) -> bool:
    """Whether two sets of settings give the same world (e.g. ``--set window=0.6,0.9`` once the default is 0.6-0.9)."""
    try:
        return world_config(size, **theirs) == world_config(size, **ours)
    except (TypeError, ValueError):
        return False


def _is_current(root: Path, config_hash: str) -> Optional[WorldInfo]:
    m = read_manifest(root)
    if m is None or m.get("config_hash") != config_hash:
        return None
    info = WorldInfo.from_manifest(root, m)
    return info if info.checkpoint.is_file() and info.run_checkpoint.is_file() else None


def build_world(
    root: str | os.PathLike,
    size: Size = "default",
    seed: int = 0,
    force: bool = False,
    workers: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
    **overrides: Any,
) -> WorldInfo:
    """Build (or find already built) the world ``size`` with ``seed`` under ``root``.

    Args:
        root: directory of the world (created).
        size: ``default`` (a few minutes on 2 CPU cores) or ``test`` (seconds).
        seed: seed of everything random (videos, splits, pretraining).
        force: rebuild everything even when the manifest matches (the checkpoint too).
        workers: processes used (1: serial; 2: videos written by a second process while the main one
            pretrains). Default: 2 for worlds of more than ``PARALLEL_MIN_VIDEOS`` videos on a machine
            with at least 2 CPUs, else 1.
        progress: called with one-line progress messages (default: logging).
        overrides: ``WorldConfig`` fields that replace the preset's (``bikebench world build --set``); a
            world at ``root`` with the same size and seed but other settings is refused, not replaced.
    """
    root = Path(root).resolve()
    cfg = world_config(size, **overrides)
    preset = world_config(size)
    # the settings as the manifest records them: tuples as tuples, values equal to the preset's dropped
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in ((k, getattr(cfg, k)) for k in overrides)}
    overrides = {k: v for k, v in given.items() if v != getattr(preset, k)}
    config_hash = cfg.content_hash(seed)
    if not force:
        info = _is_current(root, config_hash)
        if info is not None:
            return info
        _refuse_other_world(root, size, seed, overrides)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        if not force:
            info = _is_current(root, config_hash)  # another process may have built it meanwhile
            if info is not None:
                return info
            _refuse_other_world(root, size, seed, overrides)
        from bike.numerics import pinned

        with pinned() as numerics:  # the same checkpoint on every x86-64 CPU with AVX2
            from bike.world.progress import BuildProgress

            say = progress or BuildProgress()  # timestamped stage lines on stderr (a bar for the pretraining on a TTY)
            try:
                return _build(root, size, cfg, seed, config_hash, force, workers, say, numerics, overrides)
            finally:
                getattr(say, "close", lambda: None)()


def _build(
    root: Path, size: str, cfg: WorldConfig, seed: int, config_hash: str, force: bool,
    workers: Optional[int], say: Callable[[str], None], numerics: dict, settings: Optional[dict] = None,
) -> WorldInfo:
    from bike.world import measure
    from bike.world.pretrain import pretrain_clip, save_checkpoint

    t_start = time.perf_counter()
    (root / MANIFEST).unlink(missing_ok=True)  # from here on the world is incomplete
    for sub in (VIDEO_DIR, LIST_DIR, LEXICON_DIR):
        shutil.rmtree(root / sub, ignore_errors=True)
    ckpt = root / CLIP_DIR / f"{cfg.model}-{config_hash}.pt"
    # a world whose backbone is a snapshot of the pretraining keeps it beside the final CLIP
    backbone = root / CLIP_DIR / f"{cfg.model}-{config_hash}-step{cfg.backbone_step}.pt" if cfg.backbone_step else None
    if force:
        ckpt.unlink(missing_ok=True)
    for stale in (root / CLIP_DIR).glob("*.pt") if (root / CLIP_DIR).is_dir() else []:
        if stale not in (ckpt, backbone):
            stale.unlink()
    plan = plan_world(cfg, seed)
    jobs = plan.all_jobs
    if workers is None:
        workers = 2 if len(jobs) > PARALLEL_MIN_VIDEOS and (os.cpu_count() or 1) >= 2 else 1
    say(f"world {size} seed {seed} ({config_hash}): {len(jobs)} videos, {len(plan.seen)} seen + "
        f"{len(plan.novel)} novel classes, model {cfg.model}, {workers} process(es)")
    timings: dict[str, float] = {}

    def pretrain() -> Optional[dict]:
        if ckpt.is_file() and (backbone is None or backbone.is_file()):
            say(f"reusing checkpoint {ckpt.name}")
            return None
        t0 = time.perf_counter()
        pool_comps = plan.seen if cfg.pretrain_holdout_novel else plan.seen + plan.novel
        say(f"stage 2/3: pretraining the tiny CLIP {cfg.model} contrastively on frames of {len(pool_comps)} "
            f"compositions ({cfg.pretrain_steps} steps of {cfg.pretrain_batch}); it starts from random weights on "
            f"purpose (no pretrained weights exist for it), saved to {ckpt.name}")
        model, stats = pretrain_clip(cfg, seed, pool_comps, progress=say)
        if backbone is not None:  # first, so that a final checkpoint on disk always has its backbone
            save_checkpoint(stats.backbone_state, backbone)
        save_checkpoint(model, ckpt)
        timings["pretrain_s"] = round(time.perf_counter() - t0, 2)
        return {"steps": stats.steps, "final_loss": round(stats.final_loss, 4), "pool_frames": stats.pool_frames}

    t0 = time.perf_counter()
    say(f"stage 1/3: rendering and writing {len(jobs)} videos (H.264 mp4)"
        + (" in a second process while the tiny CLIP pretrains" if workers > 1 else ""))
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers - 1, mp_context=mp.get_context("spawn")) as ex:
            pending = ex.submit(write_videos, root, cfg, seed, jobs)  # one task: keeps that process busy
            pre = pretrain()
            instances = pending.result()
    else:
        instances = write_videos(root, cfg, seed, jobs, progress=say)
        timings["videos_s"] = round(time.perf_counter() - t0, 2)
        pre = pretrain()
    timings["videos_and_pretrain_s"] = round(time.perf_counter() - t0, 2)
    by_job = dict(zip((j.rel_path for j in jobs), instances))
    layout = write_text_files(root, cfg, plan, {
        "multi_train": [by_job[j.rel_path] for j in plan.multi_train],
        "multi_test": [by_job[j.rel_path] for j in plan.multi_test],
    })
    say(f"videos and checkpoint ready after {time.perf_counter() - t_start:.0f}s")
    say("stage 3/3: measuring the tiny CLIP (zero-shot on the held-out and general splits, linear probe)")
    t0 = time.perf_counter()
    model = _load_checkpoint(cfg.model, ckpt)
    metrics = measure.measure_world(model, cfg.model, root, layout, cfg.model_frames, cfg.prompt)
    if backbone is not None:  # how far the backbone is behind the generator
        metrics["backbone"] = {"step": cfg.backbone_step, **measure.measure_zero_shot(
            _load_checkpoint(cfg.model, backbone), cfg.model, root, layout, cfg.model_frames, cfg.prompt)}
    timings["measure_s"] = round(time.perf_counter() - t0, 2)
    if pre is not None:
        metrics["pretrain"] = pre
    timings["total_s"] = round(time.perf_counter() - t_start, 2)
    info = WorldInfo(
        root=root, size=size, seed=seed, config_hash=config_hash, config=json.loads(json.dumps(cfg.to_dict())), model_name=cfg.model,
        checkpoint=ckpt, frames=cfg.model_frames, resolution=_image_size(model), prompt=cfg.prompt,
        layout=asdict(layout), counts=_counts(plan, root), metrics=metrics, timings=timings,
        checkpoint_sha256=file_sha256(ckpt), numerics=numerics, settings=dict(settings or {}),
        backbone_checkpoint=backbone, backbone_checkpoint_sha256=file_sha256(backbone) if backbone else "",
    )
    _write_manifest(root, info)
    say(f"world built in {timings['total_s']:.1f}s: {json.dumps(metrics.get('zero_shot_novel', {}))}")
    return info


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_checkpoint(model_name: str, ckpt: Path):
    from bike.world.pretrain import create_model

    return create_model(model_name, pretrained=str(ckpt)).eval()


def _image_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _counts(plan, root: Path) -> dict[str, Any]:
    videos = [root / j.rel_path for j in plan.all_jobs]
    return {
        "classes_seen": len(plan.seen), "classes_novel": len(plan.novel), "classes_multilabel": len(plan.multilabel),
        "general_train": len(plan.general_train), "general_val": len(plan.general_val),
        "novel_train": len(plan.novel_train), "novel_val": len(plan.novel_val),
        "multilabel_train_videos": len(plan.multi_train), "multilabel_test_videos": len(plan.multi_test),
        "videos": len(videos), "video_bytes": sum(p.stat().st_size for p in videos),
    }


def _write_manifest(root: Path, info: WorldInfo) -> None:
    atomic_write_text(root / MANIFEST, json.dumps(info.to_manifest(), indent=2, sort_keys=True) + "\n")
