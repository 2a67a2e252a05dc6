"""The training loop: contrastive steps of both stages, accumulation, mixed precision, checkpoints, resume.

Each iteration (micro-batch) sets the learning rates at the fractional epoch ``epoch + i / iters``,
runs the forward pass under autocast, and back-propagates ``loss / grad_accum``; every ``grad_accum``
iterations the gradients of all ranks are reduced and the optimiser steps.

Global batch. ``train.batch_size`` is the batch of one optimiser step over all ranks; each rank loads
``batch_size / (world · grad_accum)`` videos per iteration. The embeddings of all ranks are gathered
(``bike.distributed.gather_with_grad``) so the loss sees the global micro-batch. Gradient reduction
makes the update equal to a single process with the whole batch: parameters computed on each rank's
own data (the CLIP towers) are summed over ranks (each rank holds the gradient of its slice), the ones
computed on the gathered batch (video branch, attribute heads, logit scale; identical on every rank)
are averaged. The official code averages everything with DDP, which divides the towers' gradients by
the number of GPUs; under AdamW this changes only the ε term.

Checkpoints. ``checkpoints/latest.pt`` is written at the end of every epoch (and at an optimiser-step
boundary when :func:`request_stop` was called, e.g. from a pre-emption signal handler); a run with a
``latest.pt`` resumes from it exactly: weights, optimiser, schedule, scaler, RNG states of every rank,
sampler position. Validation after each epoch on ``train.select_on`` keeps ``checkpoints/best.pt``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bike.config import RunConfig
from bike.distributed import gather_with_grad
from bike.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    remove_partial_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from bike.engine.logging import RunLogger, metrics_size, truncate_metrics
from bike.engine.optim import WarmupCosineSchedule
from bike.engine.precision import autocast
from bike.engine.sampler import TrainSampler
from bike.losses import multi_positive_contrastive
from bike.rundir import BEST, LATEST, checkpoint_dir

_STOP = threading.Event()
_IN_LOOP = threading.Event()


def training_active() -> bool:
    """Whether a training loop is running in this process (so :func:`request_stop` will be honoured)."""
    return _IN_LOOP.is_set()


def request_stop() -> None:
    """Ask the running training loop to checkpoint at the next optimiser step and raise :class:`Preempted`."""
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


def _kind(path: Path) -> str:
    return "directory" if path.is_dir() else "special file"


def barrier_all(world: int) -> None:
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


class Preempted(RuntimeError):
    """Training stopped on request after writing ``checkpoints/latest.pt``; run again to resume."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class TrainProgress:
    """Where training is: next epoch/batch to run, optimiser steps done, best validation so far."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    finished: bool = False


# ------------------------------------------------------------------------------ distributed bits
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``[b, ...]`` concatenated in rank order (no gradient); ``x`` itself alone."""
    rank, world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def common_batch_size(b: int, device: torch.device) -> int:
    """The smallest per-rank batch over ranks (bad videos can shrink one rank's batch)."""
    rank, world = _world()
    if world == 1:
        return b
    t = torch.tensor([b], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def reduce_gradients(model: nn.Module, sharded: Callable[[str], bool]) -> None:
    """Sum the gradients of ``sharded(name)`` parameters over ranks and average the others.

    Gradients are flattened into one buffer per (kind, dtype), so a step costs a few collectives. A
    parameter that has a gradient on some rank but not on this one contributes zeros here; one without
    a gradient on every rank keeps ``grad=None`` (the optimiser skips it, as in a single process).
    """
    rank, world = _world()
    if world == 1:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for _, p in params], dtype=torch.int32, device=params[0][1].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    buckets: dict[tuple[bool, torch.dtype], list[torch.Tensor]] = {}
    for (name, p), any_grad in zip(params, has.tolist()):
        if not any_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((sharded(name), p.grad.dtype), []).append(p.grad)
    for (is_sharded, _), grads in sorted(buckets.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        if not is_sharded:
            flat.div_(world)
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)


def broadcast_parameters(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    rank, world = _world()
    if world == 1:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


# ------------------------------------------------------------------------------ stage tasks
class StageTask(Protocol):
    """What one training stage provides to the loop."""

    num_items: int

    def loader(self, sampler: TrainSampler, epoch: int) -> Iterable: ...

    def loss(self, batch) -> torch.Tensor: ...


class VideoStageTask:
    """Stage 1: the video branch against the batch's own class prompts (``[B, B]`` logits)."""

    def __init__(self, model, dataset, config: RunConfig, device: torch.device, num_workers: int, seed: int):
        self.model, self.dataset, self.config, self.device = model, dataset, config, device
        self.num_workers, self.seed = num_workers, seed
        self.num_items = len(dataset)

    def loader(self, sampler: TrainSampler, epoch: int) -> Iterable:
        from bike.engine.datasets import epoch_loader

        rank, _ = _world()
        return epoch_loader(self.dataset, sampler, self.num_workers, seed=(self.seed * 1_000_003 + rank) * 10_007 + epoch)

    def loss(self, batch) -> torch.Tensor:
        model, cfg = self.model, self.config
        b = common_batch_size(len(batch), self.device)
        clips = batch.clips[:b].to(self.device, non_blocking=True)
        labels = batch.labels[:b].to(self.device)
        if labels.ndim != 1:
            raise ValueError("stage 'video' trains on single-label instances; the training list has multi-label entries")
        frames = gather_with_grad(model.frame_features(clips))  # [B, T, D]
        if model.category_encoder_trainable:
            local = model.class_text(labels)
            from bike.backbone import TextFeatures

            text = TextFeatures(gather_with_grad(local.cls), gather_with_grad(local.tokens))
            labels_g = gather_nograd(labels)
        else:
            labels_g = gather_nograd(labels)
            text = model.class_text(labels_g)
        mask = model.word_mask(labels_g) if cfg.model.needs_word_mask else None
        logits = model.logit_scale() * model.video_logits(frames, text, mask)  # [B, B]
        return multi_positive_contrastive(logits, labels_g, form=cfg.loss.form, target_scale=cfg.loss.target_scale)


class _IndexDataset(torch.utils.data.Dataset):
    def __init__(self, labels: list[int]):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return i, self.labels[i]


class AttributeStageTask:
    """Stage 2: attribute heads on attribute sentences vs the batch's class prompts (``[B, B]``).

    No video is decoded: the sentences come from the attributes cache. With a frozen text tower the
    sentence and class embeddings are encoded once.
    """

    def __init__(self, model, sentences: list[str], labels: list[int], config: RunConfig, device: torch.device, seed: int):
        if model.attributes is None or model.attributes.heads is None:
            raise ValueError("stage 'attributes' needs attributes.enabled=true and attributes.train=true")
        self.model, self.config, self.device, self.seed = model, config, device, seed
        self.sentences, self.labels = sentences, labels
        self.num_items = len(labels)
        self.class_texts = model.attributes.class_texts(model.class_names)
        self._sent_emb: Optional[torch.Tensor] = None
        self._class_emb: Optional[torch.Tensor] = None
        if not model.category_encoder_trainable:
            self._sent_emb = model.attributes.encode(model.attribute_text_encoder, sentences).detach()
            self._class_emb = model.attributes.encode(model.attribute_text_encoder, self.class_texts).detach()

    def loader(self, sampler: TrainSampler, epoch: int) -> Iterable:
        return torch.utils.data.DataLoader(_IndexDataset(self.labels), batch_size=sampler.batch_size, sampler=sampler, drop_last=True)

    def loss(self, batch) -> torch.Tensor:
        model, cfg = self.model, self.config
        idx, labels = batch
        labels = labels.to(self.device)
        if self._sent_emb is not None:
            sent = self._sent_emb[idx.to(self._sent_emb.device)]
            labels_g = gather_nograd(labels)
            cls = self._class_emb[labels_g.to(self._class_emb.device)]
            sent_g = gather_nograd(sent)
        else:
            sent = model.attributes.encode(model.attribute_text_encoder, [self.sentences[i] for i in idx.tolist()])
            cls_local = model.attributes.encode(model.attribute_text_encoder, [self.class_texts[i] for i in labels.tolist()])
            sent_g, cls, labels_g = gather_with_grad(sent), gather_with_grad(cls_local), gather_nograd(labels)
        logits = model.logit_scale() * model.attributes(sent_g, cls)  # [B, B]
        return multi_positive_contrastive(logits, labels_g, form=cfg.loss.form, target_scale=cfg.loss.target_scale)


# ------------------------------------------------------------------------------ the loop
Validator = Callable[[int], tuple[Optional[float], dict]]


class Trainer:
    """Runs epochs of a :class:`StageTask` with the recipe's optimiser, schedule and checkpoints.

    Args:
        validate: ``validate(epoch) -> (selection value or None, metrics)`` after each epoch; a
            higher selection value writes ``checkpoints/best.pt``.
        sharded: names of parameters computed on each rank's own data (summed over ranks).
        scaler: a ``torch.amp.GradScaler`` (disabled unless fp16 on CUDA).
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        task: StageTask,
        optimizer: torch.optim.Optimizer,
        scheduler: WarmupCosineSchedule,
        scaler: torch.amp.GradScaler,
        run_dir: Path,
        logger: RunLogger,
        device: torch.device,
        validate: Optional[Validator] = None,
        sharded: Callable[[str], bool] = lambda name: name.startswith("backbone."),
        select_split: str = "val",
    ) -> None:
        self.config, self.model, self.task = config, model, task
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.run_dir, self.logger, self.device = Path(run_dir), logger, device
        self.validate, self.sharded, self.select_split = validate, sharded, select_split
        self.rank, self.world = _world()
        t = config.train
        per_step = self.world * t.grad_accum
        if t.batch_size % per_step:
            raise ValueError(
                f"train.batch_size={t.batch_size} is not divisible by world size {self.world} x train.grad_accum "
                f"{t.grad_accum}; the per-rank batch must be a whole number"
            )
        self.sampler = TrainSampler(task.num_items, t.batch_size // per_step, seed=config.seed, rank=self.rank, world_size=self.world)
        self.iters_per_epoch = self.sampler.batches_per_epoch
        self.total_iters = max(1, math.ceil(t.epochs * self.iters_per_epoch))
        self.num_epochs = math.ceil(self.total_iters / self.iters_per_epoch)
        self.progress = TrainProgress()

    # ------------------------------------------------------------------ checkpoints
    @property
    def latest_path(self) -> Path:
        return checkpoint_dir(self.run_dir) / LATEST

    @property
    def best_path(self) -> Path:
        return checkpoint_dir(self.run_dir) / BEST

    def _rng_states(self) -> list:
        state = capture_rng_state()
        if self.world == 1:
            return [state]
        parts: list = [None] * self.world
        dist.all_gather_object(parts, state)
        return parts

    def save_latest(self) -> None:
        rngs = self._rng_states()
        if self.rank != 0:
            return
        save_checkpoint(
            self.latest_path,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "progress": asdict(self.progress),
                "rng": rngs,
                "sampler": self.sampler.state_dict(),
                "world_size": self.world,
                "config": self.config.to_yaml(),
                "config_hash": self.config.content_hash(),
                "stage": self.config.stage,
                # metrics.jsonl as of this checkpoint: a resume drops the lines written after it
                "metrics_bytes": metrics_size(self.run_dir),
            },
        )

    def save_best(self, epoch: int, value: float) -> None:
        if self.rank != 0:
            return
        save_checkpoint(
            self.best_path,
            {
                "model": self.model.state_dict(),
                "epoch": epoch,
                "metric": float(value),
                "selected_on": self.select_split,
                "config": self.config.to_yaml(),
                "config_hash": self.config.content_hash(),
                "stage": self.config.stage,
            },
        )

    def try_resume(self) -> bool:
        """Continue from ``checkpoints/latest.pt`` when present; True when resumed.

        Temporary files of an interrupted checkpoint write are removed first. An unreadable
        ``latest.pt`` is moved aside (``latest.pt.corrupt-<time>``) and the run stops, saying so: the
        next start begins the run again from step 0 (it never silently discards training). The
        ``metrics.jsonl`` lines written after the checkpoint are dropped, so a resumed run's metrics
        are not repeated.
        """
        if self.rank == 0:
            leftovers = remove_partial_checkpoints(checkpoint_dir(self.run_dir))
            if leftovers:
                self.logger.warning("removed %d partial checkpoint file(s) of an interrupted write: %s",
                                    len(leftovers), ", ".join(p.name for p in leftovers))
        if self.latest_path.exists() and not self.latest_path.is_file():
            raise ValueError(f"{self.latest_path}: expected a checkpoint file, found a {_kind(self.latest_path)}; "
                             "move it away and run again")
        if not self.latest_path.is_file():
            return False
        try:
            state = load_checkpoint(self.latest_path, map_location=self.device)
        except ValueError as exc:
            barrier_all(self.world)
            if self.rank == 0:
                aside = self.latest_path.with_name(f"{LATEST}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(self.latest_path, aside)
            else:
                aside = self.latest_path.with_name(f"{LATEST}.corrupt-*")
            raise ValueError(
                f"{exc}. It was moved to {aside.name} beside it; run the same command again to train this "
                f"run from the beginning (the progress since the last good checkpoint is lost), or put a good "
                f"{LATEST} back to resume from it"
            ) from None
        if state.get("config_hash") != self.config.content_hash():
            raise ValueError(
                f"{self.latest_path}: written by a run with config hash {state.get('config_hash')}, this run is "
                f"{self.config.content_hash()}; use a fresh run directory"
            )
        self.model.load_state_dict(state["model"])
        if hasattr(self.model, "invalidate_text_cache"):
            self.model.invalidate_text_cache()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = TrainProgress(**state["progress"])
        self.sampler.load_state_dict(state["sampler"])  # checks the dataset size is unchanged
        rngs = state["rng"]
        if state.get("world_size") == self.world and len(rngs) == self.world:
            restore_rng_state(rngs[self.rank])
        else:
            self.logger.warning("resuming with %d rank(s) from a %s-rank checkpoint: RNG streams reseeded", self.world, state.get("world_size"))
            reseed(self.config.seed + self.rank + 7919 * (self.progress.epoch + 1))
        if self.rank == 0 and state.get("metrics_bytes") is not None:
            dropped = truncate_metrics(self.run_dir, int(state["metrics_bytes"]))
            if dropped:
                self.logger.info("dropped %d metrics line(s) written after the checkpoint (the resumed run writes them again)",
                                 dropped)
        self.logger.info("resumed from %s at epoch %d, batch %d, step %d", self.latest_path, self.progress.epoch, self.progress.batch, self.progress.step)
        return True

    # ------------------------------------------------------------------ training
    def fit(self) -> TrainProgress:
        _IN_LOOP.set()
        try:
            return self._fit()
        finally:
            _IN_LOOP.clear()

    def _fit(self) -> TrainProgress:
        cfg = self.config.train
        self.try_resume()
        if self.progress.finished:
            return self.progress
        accum = cfg.grad_accum
        stop_all = False
        for epoch in range(self.progress.epoch, self.num_epochs):
            self.sampler.set_epoch(epoch)
            start = self.progress.batch if epoch == self.progress.epoch else 0
            self.sampler.set_start(start)
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            window_loss, window_n, t0 = 0.0, 0, time.time()
            loader = self.task.loader(self.sampler, epoch)
            batches = self.logger.iterate(loader, self.iters_per_epoch - start, f"epoch {epoch}", every=cfg.log_every)
            i = start
            for batch in batches:
                if epoch * self.iters_per_epoch + i >= self.total_iters:
                    stop_all = True
                    break
                lrs = self.scheduler.step(epoch + i / self.iters_per_epoch)
                with autocast(cfg.precision, self.device):
                    loss = self.task.loss(batch)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, iteration {i} (step {self.progress.step})")
                self.scaler.scale(loss / accum).backward()
                window_loss += float(loss.detach())
                window_n += 1
                i += 1
                if i % accum:
                    continue
                reduce_gradients(self.model, self.sharded)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.progress.step += 1
                self.progress.batch = i
                if self.progress.step % cfg.log_every == 0:
                    self._log_step(epoch, i, window_loss / max(window_n, 1), lrs, time.time() - t0)
                    window_loss, window_n, t0 = 0.0, 0, time.time()
                if cfg.max_steps is not None and self.progress.step >= cfg.max_steps:
                    stop_all = True
                    break
                if _STOP.is_set():
                    self.save_latest()
                    _STOP.clear()
                    raise Preempted(f"stopped on request at epoch {epoch}, batch {i}; {self.latest_path} written")
            self.optimizer.zero_grad(set_to_none=True)
            self.progress.epoch, self.progress.batch = epoch + 1, 0
            if stop_all or epoch + 1 == self.num_epochs:
                self.progress.finished = True
            self._end_of_epoch(epoch)
            self.save_latest()
            if self.progress.finished:
                break
        self.progress.finished = True
        return self.progress

    def _log_step(self, epoch: int, i: int, loss: float, lrs: list[float], seconds: float) -> None:
        groups = [g.get("name", str(k)) for k, g in enumerate(self.optimizer.param_groups)]
        record = {"kind": "train", "epoch": epoch + i / self.iters_per_epoch, "loss": loss,
                  "logit_scale": float(self.model.logit_scale().detach()) if hasattr(self.model, "logit_scale") else None}
        for name, lr in zip(groups, lrs):
            record[f"lr_{name}"] = lr
        record["steps_per_s"] = self.config.train.log_every / max(seconds, 1e-9)
        self.logger.metrics(record, self.progress.step)
        self.logger.info("epoch %.3f step %d loss %.4f lr %s", record["epoch"], self.progress.step, loss, ", ".join(f"{lr:.2e}" for lr in lrs))

    def _end_of_epoch(self, epoch: int) -> None:
        if self.validate is None:
            return
        value, metrics = self.validate(epoch)
        record = {"kind": "val", "epoch": epoch + 1, "split": self.select_split, **metrics}
        if value is not None and math.isfinite(value) and (self.progress.best_metric is None or value > self.progress.best_metric):
            self.progress.best_metric, self.progress.best_epoch = float(value), epoch + 1
            self.save_best(epoch + 1, value)
            record["best"] = True
        self.logger.metrics(record, self.progress.step)
        self.logger.info("validation after epoch %d on %s: %s", epoch + 1, self.select_split,
                         ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)))


def reseed(seed: int) -> None:
    """Seed python, numpy (legacy global) and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
