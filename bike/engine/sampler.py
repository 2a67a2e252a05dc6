"""The training sampler of the engine: resumable, rank-sharded, one global batch per step.

Training (:class:`TrainSampler`): each epoch is a permutation drawn from ``(seed, epoch)`` alone, cut
into global batches of ``world × batch`` items (the incomplete last one is dropped, as the official
``drop_last=True``); rank r takes the r-th slice of every global batch. So the concatenation of the
ranks' batches in rank order — what ``gather_with_grad`` builds — is exactly the batch a single
process with a ``world × batch`` batch sees, and resuming needs only ``(epoch, start_batch)``.

Evaluation uses ``bike.data.loader``'s padding-free sampler (whole videos per rank, every video once;
the official ``DistributedSampler`` pads and counts duplicates).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler[int]):
    """Deterministic per-epoch shuffle, sharded by rank, resumable mid-epoch.

    ``batch_size`` is the per-rank batch. ``set_epoch(e)`` picks the permutation;
    ``set_start(b)`` skips the first ``b`` batches of the epoch (mid-epoch resume).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TrainSampler: bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"TrainSampler: {num_items} training items cannot fill one global batch of "
                f"{world_size} x {batch_size}; lower train.batch_size"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start_batch = 0

    def set_start(self, batch_index: int) -> None:
        if not 0 <= batch_index <= self.batches_per_epoch:
            raise ValueError(f"start batch {batch_index} outside 0..{self.batches_per_epoch}")
        self.start_batch = int(batch_index)

    def epoch_order(self) -> torch.Tensor:
        """The epoch's global item order ``[num_items]``."""
        if not self.shuffle:
            return torch.arange(self.num_items)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_items, generator=g)

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        gb = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = order[b * gb : (b + 1) * gb]
            yield from chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch, "num_items": self.num_items}

    def load_state_dict(self, state: dict) -> None:
        if state["num_items"] != self.num_items:
            raise ValueError(f"sampler state is for {state['num_items']} items, the dataset has {self.num_items}")
        self.seed, self.epoch, self.start_batch = state["seed"], state["epoch"], state["start_batch"]
