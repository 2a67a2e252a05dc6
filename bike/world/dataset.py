"""Writing a ToyKinetics world to disk in the file formats of the real datasets.

Layout under the world root (every path in the manifest is relative to it)::

    videos/general/{train,val}/<class_slug>/<class_slug>_<nnnn>.mp4   seen compositions
    videos/novel/{train,val}/<class_slug>/<class_slug>_<nnnn>.mp4     held-out compositions
    videos/multilabel/TK<nnnn>.mp4                                    two actions per video
    lists/general_classes.csv  general_train.txt  general_val.txt     `id,name` / `<path>.mp4 <label>`
    lists/novel_classes.csv    novel_train.txt    novel_val.txt
    lists/multilabel_classes.txt  multilabel_train.csv  multilabel_test.csv   Charades formats
    lexicons/world.txt  lexicons/world_objects.txt                    one phrase per line

Video lists are relative to ``videos/``; the Charades files name videos by id, relative to
``videos/multilabel/``.
"""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from bike.rundir import atomic_write_text
from bike.world.config import DISTRACTOR_RGB, STILL_WORDS, UNRELATED_PHRASES, WorldConfig
from bike.world.generator import (
    STREAM_GENERAL_TRAIN,
    STREAM_GENERAL_VAL,
    STREAM_MULTI_TEST,
    STREAM_MULTI_TRAIN,
    STREAM_NOVEL_TRAIN,
    STREAM_NOVEL_VAL,
    ActionInstance,
    Composition,
    describe,
    make_video,
    pick_pair,
    split_compositions,
    video_rng,
)

VIDEO_DIR = "videos"
LIST_DIR = "lists"
LEXICON_DIR = "lexicons"
MULTI_DIR = "multilabel"
#: Columns of Charades_v1_test.csv (the reader needs ``id`` and ``actions``).
CHARADES_TEST_COLUMNS = (
    "id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions", "actions", "length",
)
#: Video id prefix of the multi-label videos.
MULTI_ID_PREFIX = "TK"


@dataclass(frozen=True)
class VideoJob:
    """One video to write: its path relative to the root, its classes and its random stream."""

    rel_path: str
    comps: tuple[Composition, ...]
    stream: int
    index: int


@dataclass(frozen=True)
class WorldLayout:
    """Relative paths of every file of a world (see the module docstring)."""

    video_root: str = VIDEO_DIR
    general_classes: str = f"{LIST_DIR}/general_classes.csv"
    general_train: str = f"{LIST_DIR}/general_train.txt"
    general_val: str = f"{LIST_DIR}/general_val.txt"
    novel_classes: str = f"{LIST_DIR}/novel_classes.csv"
    novel_train: str = f"{LIST_DIR}/novel_train.txt"
    novel_val: str = f"{LIST_DIR}/novel_val.txt"
    multilabel_root: str = f"{VIDEO_DIR}/{MULTI_DIR}"
    multilabel_classes: str = f"{LIST_DIR}/multilabel_classes.txt"
    multilabel_train: str = f"{LIST_DIR}/multilabel_train.csv"
    multilabel_test: str = f"{LIST_DIR}/multilabel_test.csv"
    lexicon_world: str = f"{LEXICON_DIR}/world.txt"
    lexicon_objects: str = f"{LEXICON_DIR}/world_objects.txt"


@dataclass
class WorldPlan:
    """What a world holds: its classes and the videos to write."""

    seen: list[Composition]
    novel: list[Composition]
    multilabel: list[Composition]
    general_train: list[VideoJob]
    general_val: list[VideoJob]
    novel_train: list[VideoJob]
    novel_val: list[VideoJob]
    multi_train: list[VideoJob]
    multi_test: list[VideoJob]

    @property
    def all_jobs(self) -> list[VideoJob]:
        return (self.general_train + self.general_val + self.novel_train + self.novel_val
                + self.multi_train + self.multi_test)


def _class_jobs(split_dir: str, classes: Sequence[Composition], per_class: int, stream: int) -> list[VideoJob]:
    jobs = []
    for k, comp in enumerate(classes):
        for i in range(per_class):
            index = k * per_class + i
            rel = f"{VIDEO_DIR}/{split_dir}/{comp.slug}/{comp.slug}_{i:04d}.mp4"
            jobs.append(VideoJob(rel, (comp,), stream, index))
    return jobs


def _multi_jobs(classes: Sequence[Composition], count: int, stream: int, seed: int, offset: int) -> list[VideoJob]:
    jobs = []
    for i in range(count):
        pair = pick_pair(video_rng(seed, stream, 10**6 + i), classes)
        jobs.append(VideoJob(f"{VIDEO_DIR}/{MULTI_DIR}/{MULTI_ID_PREFIX}{offset + i:04d}.mp4", pair, stream, i))
    return jobs


def plan_world(cfg: WorldConfig, seed: int) -> WorldPlan:
    """The classes and videos of the world (deterministic from ``seed``)."""
    import numpy as np

    seen, novel = split_compositions(cfg, seed)
    rng = np.random.default_rng([seed, STREAM_MULTI_TRAIN, 0])
    multilabel = sorted(seen[i] for i in rng.choice(len(seen), cfg.multilabel_classes, replace=False))
    return WorldPlan(
        seen=seen,
        novel=novel,
        multilabel=multilabel,
        general_train=_class_jobs("general/train", seen, cfg.train_per_class, STREAM_GENERAL_TRAIN),
        general_val=_class_jobs("general/val", seen, cfg.val_per_class, STREAM_GENERAL_VAL),
        novel_train=_class_jobs("novel/train", novel, cfg.novel_train_per_class, STREAM_NOVEL_TRAIN),
        novel_val=_class_jobs("novel/val", novel, cfg.novel_val_per_class, STREAM_NOVEL_VAL),
        multi_train=_multi_jobs(multilabel, cfg.multilabel_train_videos, STREAM_MULTI_TRAIN, seed, 0),
        multi_test=_multi_jobs(multilabel, cfg.multilabel_test_videos, STREAM_MULTI_TEST, seed, cfg.multilabel_train_videos),
    )


def write_video(root: str, cfg: WorldConfig, seed: int, job: VideoJob) -> list[ActionInstance]:
    """Render and write one video (atomically); returns its action instances."""
    from bike.data.video_io import write_mp4

    frames, instances = make_video(video_rng(seed, job.stream, job.index), cfg, job.comps)
    write_mp4(os.path.join(root, job.rel_path), frames, fps=cfg.fps)
    return instances


def write_videos(
    root: Path,
    cfg: WorldConfig,
    seed: int,
    jobs: Sequence[VideoJob],
    executor: Optional[Executor] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> list[list[ActionInstance]]:
    """Write every job's video (in ``executor`` when given); returns the instances of each job."""
    if executor is None:
        out = []
        for i, job in enumerate(jobs):
            out.append(write_video(str(root), cfg, seed, job))
            if progress and (i + 1) % 250 == 0:
                progress(f"videos: {i + 1}/{len(jobs)}")
        return out
    n = len(jobs)
    return list(executor.map(write_video, [str(root)] * n, [cfg] * n, [seed] * n, jobs, chunksize=32))


# ---------------------------------------------------------------------------------------- text files
def class_csv(classes: Sequence[Composition]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "name"])
    for i, c in enumerate(classes):
        w.writerow([i, c.name])
    return buf.getvalue()


def video_list(jobs: Sequence[VideoJob], classes: Sequence[Composition]) -> str:
    """``<path relative to videos/> <label>`` lines."""
    index = {c: i for i, c in enumerate(classes)}
    prefix = VIDEO_DIR + "/"
    return "".join(f"{j.rel_path[len(prefix):]} {index[j.comps[0]]}\n" for j in jobs)


def _video_id(job: VideoJob) -> str:
    return Path(job.rel_path).stem


def charades_classes(classes: Sequence[Composition]) -> str:
    return "".join(f"c{i:03d} {c.name}\n" for i, c in enumerate(classes))


def charades_train(jobs: Sequence[VideoJob], instances: Sequence[Sequence[ActionInstance]],
                   classes: Sequence[Composition], cfg: WorldConfig) -> str:
    """``video_id,label,start_time,end_time,total_time``: one row per action instance."""
    index = {c: i for i, c in enumerate(classes)}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id", "label", "start_time", "end_time", "total_time"])
    total = f"{cfg.frames / cfg.fps:.2f}"
    for job, insts in zip(jobs, instances):
        for inst in insts:
            w.writerow([_video_id(job), f"c{index[inst.composition]:03d}", f"{inst.start / cfg.fps:.2f}",
                        f"{inst.end / cfg.fps:.2f}", total])
    return buf.getvalue()


def charades_test(jobs: Sequence[VideoJob], instances: Sequence[Sequence[ActionInstance]],
                  classes: Sequence[Composition], cfg: WorldConfig) -> str:
    """``Charades_v1_test.csv`` columns; ``actions`` = ``c001 0.00 2.00;c005 1.50 3.20``."""
    index = {c: i for i, c in enumerate(classes)}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CHARADES_TEST_COLUMNS)
    for job, insts in zip(jobs, instances):
        actions = ";".join(
            f"c{index[i.composition]:03d} {i.start / cfg.fps:.2f} {i.end / cfg.fps:.2f}" for i in insts
        )
        objects = ";".join(sorted({i.composition.shape for i in insts}))
        script = describe(insts)
        w.writerow([_video_id(job), "toy", "toy world", 7, 7, "Yes", script, objects, script, actions,
                    f"{cfg.frames / cfg.fps:.2f}"])
    return buf.getvalue()


def world_lexicon(cfg: WorldConfig, seen: Sequence[Composition]) -> list[str]:
    """The world's analogue of the 400 Kinetics names: the seen class names, still objects (class and
    distractor colours), an empty scene, and phrases that no frame shows; with ``cfg.lexicon_facets``
    also the facets of an action, as captions name them: shape and motion (``ball rising``), colour and
    motion (``red shape rising``), and each attribute alone (``red shape``, ``ball``, ``shape rising``)."""
    still = STILL_WORDS[0]
    phrases = [c.name for c in seen]
    phrases += [f"{c} {s} {still}" for c in tuple(cfg.colours) + tuple(DISTRACTOR_RGB) for s in cfg.shapes]
    phrases += ["empty background", *UNRELATED_PHRASES]
    if cfg.lexicon_facets:
        phrases += [f"{s} {m}" for s in cfg.shapes for m in cfg.motions]
        phrases += [f"{c} shape {m}" for c in cfg.colours for m in cfg.motions]
        phrases += [f"{c} shape" for c in cfg.colours] + list(cfg.shapes) + [f"shape {m}" for m in cfg.motions]
    return phrases


def object_lexicon(cfg: WorldConfig) -> list[str]:
    """The world's analogue of the ImageNet-1K names: objects only (colour + shape), no motion."""
    phrases = [f"{c} {s}" for c in tuple(cfg.colours) + tuple(DISTRACTOR_RGB) for s in cfg.shapes]
    return phrases + ["empty background", "orange star", "pink heart", "wooden table", "black hole"]


def write_text_files(
    root: Path, cfg: WorldConfig, plan: WorldPlan, instances: dict[str, list[list[ActionInstance]]]
) -> WorldLayout:
    """Write the class files, lists, Charades CSVs and lexicons; ``instances`` holds the multi-label
    videos' actions under ``"multi_train"`` / ``"multi_test"``."""
    lay = WorldLayout()
    files = {
        lay.general_classes: class_csv(plan.seen),
        lay.general_train: video_list(plan.general_train, plan.seen),
        lay.general_val: video_list(plan.general_val, plan.seen),
        lay.novel_classes: class_csv(plan.novel),
        lay.novel_train: video_list(plan.novel_train, plan.novel),
        lay.novel_val: video_list(plan.novel_val, plan.novel),
        lay.multilabel_classes: charades_classes(plan.multilabel),
        lay.multilabel_train: charades_train(plan.multi_train, instances["multi_train"], plan.multilabel, cfg),
        lay.multilabel_test: charades_test(plan.multi_test, instances["multi_test"], plan.multilabel, cfg),
        lay.lexicon_world: "\n".join(world_lexicon(cfg, plan.seen)) + "\n",
        lay.lexicon_objects: "\n".join(object_lexicon(cfg)) + "\n",
    }
    for rel, text in files.items():
        atomic_write_text(root / rel, text)
    return lay
