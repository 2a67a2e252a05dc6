"""Process groups from torchrun or SLURM, and the gradient-carrying all-gather of the global batch.

``init_distributed()`` reads torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) or, failing those, SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``,
``SLURM_LOCALID``; master = first host of ``SLURM_JOB_NODELIST``; port from ``MASTER_PORT`` or derived
from ``SLURM_JOB_ID``). NCCL on GPUs, gloo on CPU; a single process when neither is set.

``gather_with_grad(x)`` concatenates every rank's ``[b, ...]`` into ``[world * b, ...]``; its backward
hands each rank the slice of the incoming gradient that belongs to its own inputs (every rank computes
the same loss over the global batch, appendix A.6).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from itertools import product
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

#: Base and span of the port derived from the SLURM job id when MASTER_PORT is not set.
SLURM_PORT_BASE = 15000
SLURM_PORT_SPAN = 20000
DEFAULT_TIMEOUT = timedelta(minutes=30)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on its node and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ----------------------------------------------------------------------------------- environment
def expand_hostlist(nodelist: str) -> list[str]:
    """Expand a SLURM node list: ``"node[01-04,07],gpu1"`` -> ``node01..node04, node07, gpu1``.

    Handles comma-separated hosts, several bracket groups per host (``r[1-2]n[1-2]``), ranges that keep
    zero padding, and single values.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        if not item:
            continue
        parts = re.split(r"(\[[^\]]*\])", item)
        choices: list[list[str]] = []
        for part in parts:
            if part.startswith("[") and part.endswith("]"):
                choices.append(_expand_range_group(part[1:-1], nodelist))
            elif part:
                choices.append([part])
        hosts.extend("".join(combo) for combo in product(*choices))
    if not hosts:
        raise ValueError(f"SLURM node list {nodelist!r} names no host")
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _expand_range_group(group: str, whole: str) -> list[str]:
    values: list[str] = []
    for piece in group.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", piece.strip())
        if not m:
            raise ValueError(f"SLURM node list {whole!r}: cannot parse range {piece!r}")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            values.append(lo)
        else:
            width = len(lo)
            values.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return values


def _env_int(name: str) -> Optional[int]:
    val = os.environ.get(name)
    if val is None or val == "":
        return None
    try:
        return int(val)
    except ValueError:
        raise ValueError(f"environment variable {name}={val!r}: expected an integer") from None


def _resolve_env() -> Optional[tuple[int, int, int, str, str]]:
    """(rank, world, local_rank, master_addr, master_port) from torchrun or SLURM, or None."""
    if os.environ.get("RANK") is not None and os.environ.get("WORLD_SIZE") is not None:
        rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
        local = _env_int("LOCAL_RANK") or 0
        addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = os.environ.get("MASTER_PORT", "29500")
        return int(rank), int(world), local, addr, port  # type: ignore[arg-type]
    if os.environ.get("SLURM_PROCID") is not None and (_env_int("SLURM_NTASKS") or 1) > 1:
        rank = int(_env_int("SLURM_PROCID"))  # type: ignore[arg-type]
        world = int(_env_int("SLURM_NTASKS"))  # type: ignore[arg-type]
        local = _env_int("SLURM_LOCALID") or 0
        nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
        addr = os.environ.get("MASTER_ADDR") or (expand_hostlist(nodelist)[0] if nodelist else None)
        if addr is None:
            raise ValueError("SLURM run without MASTER_ADDR or SLURM_JOB_NODELIST/SLURM_NODELIST: cannot find the master")
        port = os.environ.get("MASTER_PORT")
        if port is None:
            job = _env_int("SLURM_JOB_ID") or 0
            port = str(SLURM_PORT_BASE + job % SLURM_PORT_SPAN)
        return rank, world, local, addr, port
    return None


# ----------------------------------------------------------------------------------- set-up
def init_distributed(backend: Optional[str] = None, timeout: timedelta = DEFAULT_TIMEOUT) -> DistInfo:
    """Join the process group described by the environment (torchrun or SLURM), or run alone.

    Args:
        backend: ``"nccl"``/``"gloo"``; default NCCL when CUDA is available, else gloo.

    Returns:
        ``DistInfo(rank, world_size, local_rank, device)``; the device is ``cuda:<local_rank>`` on GPUs.
    """
    cuda = torch.cuda.is_available()
    if dist.is_available() and dist.is_initialized():
        local = _env_int("LOCAL_RANK") or _env_int("SLURM_LOCALID") or 0
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)
    env = _resolve_env()
    if env is None:
        device = torch.device("cuda:0") if cuda else torch.device("cpu")
        return DistInfo(0, 1, 0, device)
    rank, world, local, addr, port = env
    if not 0 <= rank < world:
        raise ValueError(f"distributed environment: rank {rank} outside world size {world}")
    if cuda:
        device = torch.device(f"cuda:{local % max(1, torch.cuda.device_count())}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    global _STORE, _GENERATION
    store, _, _ = next(dist.rendezvous(f"tcp://{addr}:{port}", rank, world, timeout=timeout))
    _GENERATION += 1
    _STORE = _Store(store, rank0_serves=os.environ.get(AGENT_STORE_VAR) != "True")
    dist.init_process_group(
        backend=backend or ("nccl" if cuda else "gloo"),
        # keys of a later group in this process never meet a former group's (an agent's store outlives both)
        store=dist.PrefixStore(f"bikebench/group{_GENERATION}/", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
    return DistInfo(rank, world, local, device)


@dataclass
class _Store:
    """The key-value store of the group this process created, and whether rank 0 serves it.

    Rank 0 serves it unless torchrun's agent does (``TORCHELASTIC_USE_AGENT_STORE=True``); a served
    store lives exactly as long as rank 0 holds it, which :func:`shutdown` uses to order the ranks.
    """

    store: Any
    rank0_serves: bool


#: torchrun's variable saying its agent serves the store at MASTER_ADDR:MASTER_PORT for every rank.
AGENT_STORE_VAR = "TORCHELASTIC_USE_AGENT_STORE"
_STORE: Optional[_Store] = None
_GENERATION = 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank (0 when not distributed)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active() and world_size() > 1:
        dist.barrier()


def leaves_process_group(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate an entry point that may join a process group (``bike.train.run``, ``bike.evaluate.run``).

    When the call returns, a group that did not exist before it is left with :func:`shutdown` (barrier,
    then destroy), so no gloo/NCCL/TCPStore thread outlives the run: a task that exits with its group
    alive leaves those threads to interpreter teardown, whose documented failure is an abort after the
    results are written ("terminate called without an active exception", pytorch#190489). A group the
    caller created is left to the caller; after an exception the group is not touched (a barrier would
    wait for the ranks that are still working).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        created_here = not _active()
        result = fn(*args, **kwargs)
        if created_here:
            shutdown()
        return result

    return wrapper


def shutdown() -> None:
    """Leave the process group cleanly: wait for every rank, then destroy it (no-op without one).

    Destroying a gloo group while a peer is still talking to it can abort the process at exit
    ("terminate called without an active exception"), so every rank passes a barrier first.

    When rank 0 serves the group's store (on ``MASTER_PORT``), the other ranks then wait until that
    store has closed before they return: a rank that went on to join its next group (a resumed
    training, an evaluation after it, in the same process) could otherwise reach the former store,
    still open on the same port, and fail with "Connection reset by peer" when rank 0 closes it.
    """
    global _STORE
    if not _active():
        return
    held, _STORE = _STORE, None
    if world_size() > 1:
        dist.barrier()
        if held is not None and held.rank0_serves and dist.get_rank() != 0:
            _wait_until_closed(held.store)
    dist.destroy_process_group()
    del held  # rank 0: the last reference to the store, whose server closes here


#: A key nobody sets: reading it blocks until rank 0's store closes the connection.
_NEVER_SET = "bikebench/rank0-store-closes-before-this-is-set"


def _wait_until_closed(store: Any) -> None:
    """Block until the server of ``store`` closes (the read fails), or the store's own timeout."""
    try:
        store.get(_NEVER_SET)
    except RuntimeError:  # DistNetworkError when the server closes; DistStoreError on its timeout
        return


# ----------------------------------------------------------------------------------- gather
class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward returns this rank's slice of the incoming gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, r = dist.get_world_size(), dist.get_rank()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.batch = r, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        start = ctx.rank * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``[b, ...] -> [world * b, ...]`` in rank order, differentiable wrt this rank's ``x``.

    Every rank must pass the same ``b``. In a single process this returns ``x`` unchanged.
    """
    if not _active() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
