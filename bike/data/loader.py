"""DataLoader set-up for :class:`~bike.data.dataset.VideoDataset`.

``make_loader(dataset, batch_size, train, num_workers, distributed=False, seed=0)`` returns a
:class:`VideoLoader` (a ``torch.utils.data.DataLoader``) whose batches are :class:`Batch` objects:

* ``clips``     ``float [B, T, 3, S, S]``
* ``labels``    ``long [B]`` or multi-hot ``float [B, K]``
* ``video_ids`` ``list[str]`` (B), ``views`` ``long [B]``
* ``bad``       the :class:`~bike.data.dataset.BadItem` s dropped from this batch

``Batch`` unpacks like ``clips, labels, video_ids, views = batch``. Iterating the loader feeds every
batch to ``dataset.bad_log`` in the main process (works with any number of workers), which enforces
the training threshold; at the end of an evaluation pass a strict log raises with the bad files.

Samplers: training shuffles with a seeded per-epoch permutation (``set_epoch``) and drops the last
partial batch; distributed training uses ``DistributedSampler`` (drop_last). Evaluation never pads:
:class:`UnpaddedDistributedSampler` gives each rank a contiguous block of whole videos (all views of a
video on one rank), so every video is counted exactly once across ranks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from bike.data.dataset import BadItem, VideoItem

_log = logging.getLogger(__name__)

#: Batches each worker prepares ahead (torch's default).
PREFETCH_FACTOR = 2
#: torch threads inside each DataLoader worker (workers already run in parallel).
WORKER_THREADS = 1


@dataclass
class Batch:
    """A collated batch; unpacks as ``(clips, labels, video_ids, views)``."""

    clips: torch.Tensor
    labels: torch.Tensor
    video_ids: list
    views: torch.Tensor
    bad: list = field(default_factory=list)
    fallbacks: list = field(default_factory=list)
    num_none: int = 0
    padded: list = field(default_factory=list)  # (path, frame count) of videos shorter than the clip

    def __iter__(self) -> Iterator:
        return iter((self.clips, self.labels, self.video_ids, self.views))

    def __len__(self) -> int:
        return len(self.video_ids)

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pin-memory thread (``pin_memory=True``)."""
        return Batch(
            self.clips.pin_memory() if len(self) else self.clips,
            self.labels.pin_memory() if len(self) else self.labels,
            self.video_ids,
            self.views.pin_memory() if len(self) else self.views,
            self.bad,
            self.fallbacks,
            self.num_none,
            self.padded,
        )

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        return Batch(
            self.clips.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.video_ids,
            self.views.to(device, non_blocking=non_blocking),
            self.bad,
            self.fallbacks,
            self.num_none,
            self.padded,
        )


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``; inside a DataLoader worker straight into shared memory (as torch's default collate
    does), so sending the batch to the main process does not copy it once more."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(tensors)
    elem = tensors[0]
    storage = elem._typed_storage()._new_shared(len(tensors) * elem.numel(), device=elem.device)
    out = elem.new(storage).resize_(len(tensors), *elem.shape)
    return torch.stack(tensors, out=out)


def collate_videos(items: Sequence[Union[VideoItem, BadItem, None, tuple]]) -> Batch:
    """Stack the good items; drop ``BadItem`` s (kept in ``Batch.bad``) and ``None`` s (counted)."""
    good = [it for it in items if it is not None and not isinstance(it, BadItem)]
    bad = [it for it in items if isinstance(it, BadItem)]
    num_none = sum(1 for it in items if it is None)
    fallbacks = [(it.path, it.fallback) for it in good if isinstance(it, VideoItem) and it.fallback]
    padded = [(it.path, it.short_of) for it in good if isinstance(it, VideoItem) and it.short_of is not None]
    if not good:
        empty = torch.empty(0)
        return Batch(empty, empty.long(), [], empty.long(), bad, fallbacks, num_none, padded)
    clips, labels, ids, views = zip(*(tuple(it) for it in good))
    clips_t = _stack(clips)
    if isinstance(labels[0], torch.Tensor):
        labels_t = torch.stack(labels).to(torch.float32)
    else:
        labels_t = torch.tensor(labels, dtype=torch.long)
    return Batch(clips_t, labels_t, list(ids), torch.tensor(views, dtype=torch.long), bad, fallbacks, num_none, padded)


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``seed + epoch`` (reproducible; ``set_epoch`` per epoch)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class UnpaddedDistributedSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` gets the r-th contiguous block of whole videos, no padding.

    ``num_items = num_videos * num_views``; items of one video stay together, blocks differ in size
    by at most one video, and the union over ranks is every item exactly once.
    """

    def __init__(self, num_items: int, num_views: int = 1, num_replicas: Optional[int] = None, rank: Optional[int] = None) -> None:
        if num_replicas is None or rank is None:
            num_replicas, rank = _world()
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if num_items % num_views:
            raise ValueError(f"{num_items} items are not a whole number of videos of {num_views} views")
        videos = np.array_split(np.arange(num_items // num_views), num_replicas)[rank]
        self.indices = (videos[:, None] * num_views + np.arange(num_views)[None, :]).reshape(-1).tolist()
        self.num_replicas, self.rank = num_replicas, rank

    def set_epoch(self, epoch: int) -> None:  # deterministic: nothing to reseed
        pass

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True needs an initialised torch.distributed process group (or pass world_size/rank)")
    return dist.get_world_size(), dist.get_rank()


def worker_context(dataset: Any) -> dict:
    """DataLoader keyword for the workers' start method: ``forkserver`` when the dataset decodes with
    PyAV, whose FFmpeg state a forked child can inherit mid-use (a worker forked after the parent used
    PyAV, e.g. to write videos, hung in its first decode); the default ``fork`` otherwise."""
    if getattr(dataset, "backend", None) == "pyav":
        return {"multiprocessing_context": "forkserver"}
    return {}


def _worker_init(_: int) -> None:
    torch.set_num_threads(WORKER_THREADS)


#: Public name of the worker initialiser (one torch thread per DataLoader worker).
worker_init = _worker_init


class VideoLoader(DataLoader):
    """A DataLoader that counts bad videos in ``dataset.bad_log`` and skips batches with no good item."""

    def __iter__(self) -> Iterator[Batch]:
        log = getattr(self.dataset, "bad_log", None)
        warned = False
        for batch in super().__iter__():
            if log is not None:
                log.update(batch)
            if batch.num_none and not warned:
                _log.warning("the dataset returned None items; they were dropped without a path to report")
                warned = True
            if len(batch):
                yield batch
        if log is not None:
            log.end_of_pass()

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before iterating each epoch)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def make_loader(
    dataset,
    batch_size: int,
    train: bool,
    num_workers: int,
    distributed: bool = False,
    seed: int = 0,
    prefetch_factor: int = PREFETCH_FACTOR,
    pin_memory: Optional[bool] = None,
    world_size: Optional[int] = None,
    rank: Optional[int] = None,
) -> VideoLoader:
    """Loader over ``dataset`` (``batch_size`` per process).

    train: shuffle (seeded, per epoch) and drop the last partial batch; else in order, nothing dropped.
    distributed: split across ranks (``world_size``/``rank`` default to torch.distributed's).
    pin_memory: default ``torch.cuda.is_available()``. Workers are persistent and use one thread each.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers}; expected >= 0")
    n = len(dataset)
    if train:
        if distributed:
            if world_size is None or rank is None:
                world_size, rank = _world()
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        else:
            sampler = EpochShuffleSampler(n, seed)
    elif distributed:
        sampler = UnpaddedDistributedSampler(n, getattr(dataset, "num_views", 1), world_size, rank)
    else:
        sampler = None
    kwargs = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor, worker_init_fn=_worker_init,
                      **worker_context(dataset))
    return VideoLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_videos,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=bool(train),
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
