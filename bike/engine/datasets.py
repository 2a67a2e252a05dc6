"""Records, datasets and loaders of a run's splits.

Splits: ``train`` (the training list minus the tuning hold-out), ``tune`` (the hold-out:
``data.tuning_holdout`` of every class of the training list, fixed by :data:`HOLDOUT_SEED` so that runs
with different seeds tune on the same videos), ``val`` and ``test`` (their lists). Few-shot training
(``train.few_shot = K``) draws K videos per class from ``train`` with ``train.few_shot_seed``, repeats
them to the full list's length (the official iterations per epoch) and writes the choice to
``<run_dir>/few_shot_list.txt``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from bike.config import RunConfig
from bike.data.dataset import VideoDataset
from bike.data.lists import VideoRecord, apply_exclude_list, read_classes, read_dataset
from bike.data.loader import VideoLoader, collate_videos, make_loader
from bike.engine.sampler import TrainSampler

#: Seed of the tuning hold-out draw (independent of the run seed).
HOLDOUT_SEED = 0
FEW_SHOT_LIST = "few_shot_list.txt"
_log = logging.getLogger(__name__)


def class_names(config: RunConfig) -> list[str]:
    return read_classes(config.data)


def _read_split(config: RunConfig, split: str, log: Optional[logging.Logger] = None) -> tuple[list[VideoRecord], list[str]]:
    """``read_dataset`` minus the entries of ``data.exclude_list``; how many were excluded is logged
    (to ``log``, else this module's logger)."""
    records, names = read_dataset(config.data, split)
    if not config.data.exclude_list:
        return records, names
    kept, excluded = apply_exclude_list(records, config.data)
    (log or _log).warning("data.exclude_list %s: excluded %d of the %d entries of the %s list %s",
                 config.data.exclude_list, len(excluded), len(records), split, getattr(config.data, f"{split}_list"))
    if not kept:
        raise ValueError(f"data.exclude_list {config.data.exclude_list} excludes every entry of the {split} list")
    return kept, names


def split_records(config: RunConfig, split: str, log: Optional[logging.Logger] = None) -> tuple[list[VideoRecord], list[str]]:
    """Records and class names of ``split`` (``train``, ``tune``, ``val`` or ``test``), minus ``data.exclude_list``
    (``log``: where the number excluded is logged)."""
    from bike.protocols import holdout_split

    if split in ("train", "tune"):
        records, names = _read_split(config, "train", log)
        share = config.data.tuning_holdout
        if share > 0:
            kept, held = holdout_split(records, share, HOLDOUT_SEED)
            records = kept if split == "train" else held
        elif split == "tune":
            raise ValueError("split 'tune' needs data.tuning_holdout > 0 (the share of the training list held out)")
        if not records:
            raise ValueError(f"split {split!r} is empty (data.tuning_holdout={share})")
        return records, names
    if split not in ("val", "test"):
        raise ValueError(f"unknown split {split!r}; expected train, tune, val or test")
    return _read_split(config, split, log)


def training_records(config: RunConfig, run_dir: Optional[Path] = None, write_choice: bool = True) -> tuple[list[VideoRecord], list[str]]:
    """The training records of a run: the ``train`` split, or its few-shot selection repeated."""
    from bike.protocols import few_shot_select, repeat_to_length, write_video_list

    # the number excluded goes to the run's own log.txt (RunLogger's logger is "bike.<run dir name>")
    log = logging.getLogger(f"bike.{Path(run_dir).name}") if run_dir is not None else None
    records, names = split_records(config, "train", log)
    k = config.train.few_shot
    if k is None:
        return records, names
    chosen = few_shot_select(records, k, config.train.few_shot_seed, num_classes=len(names))
    if run_dir is not None and write_choice:
        write_video_list(chosen, Path(run_dir) / FEW_SHOT_LIST, config.data.root or ".")
    return repeat_to_length(chosen, max(len(records), len(chosen))), names


def build_dataset(config: RunConfig, records: Sequence[VideoRecord], train: bool, num_classes: int, views: Optional[tuple[int, int]] = None, mean=None, std=None) -> VideoDataset:
    kwargs = {}
    if mean is not None:
        kwargs["mean"], kwargs["std"] = tuple(mean), tuple(std)
    return VideoDataset(records, config, train=train, views=views, num_classes=num_classes, **kwargs)


def epoch_loader(dataset, sampler: TrainSampler, num_workers: int, seed: int) -> VideoLoader:
    """A training loader for one epoch of ``sampler`` (per-rank batches).

    A fresh loader per epoch whose worker seeds derive from ``seed`` (run seed, rank and epoch): the
    augmentation of an epoch does not depend on whether the run was resumed.
    """
    kwargs = {}
    if num_workers > 0:
        from bike.data.loader import PREFETCH_FACTOR, _worker_init, worker_context

        kwargs.update(prefetch_factor=PREFETCH_FACTOR, worker_init_fn=_worker_init, **worker_context(dataset))
    return VideoLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_videos,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def eval_loader(dataset, batch_size: int, num_workers: int, world_size: int, rank: int) -> VideoLoader:
    """An evaluation loader: in order, every item once, whole videos per rank (no padding)."""
    return make_loader(
        dataset,
        batch_size,
        train=False,
        num_workers=num_workers,
        distributed=world_size > 1,
        world_size=world_size,
        rank=rank,
    )
