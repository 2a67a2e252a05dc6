"""bike.distributed: environment parsing, single-process fallbacks, and the gradient of the gather
checked with two real gloo processes against one process computing the loss on the whole batch."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from bike import distributed as bd
from bike.losses import multi_positive_contrastive

WORLD = 2
PER_RANK = 3
DIM = 5
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
            "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch():
    gen = torch.Generator().manual_seed(7)
    video = torch.randn(WORLD * PER_RANK, DIM, generator=gen, dtype=torch.float64)
    text = torch.randn(WORLD * PER_RANK, DIM, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    return video, text, labels


def _loss(video: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = 100.0 * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()
    return multi_positive_contrastive(logits, labels)


def _run_one(rank: int, port: int, launcher: str, out_dir: str) -> None:
    for key in ENV_KEYS:
        os.environ.pop(key, None)
    if launcher == "torchrun":
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    else:
        os.environ.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(WORLD), SLURM_LOCALID=str(rank),
                          SLURM_JOB_NODELIST="127.0.0.1", MASTER_PORT=str(port))
    info = bd.init_distributed(backend="gloo")
    video, text, labels = _global_batch()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    v = video[mine].clone().requires_grad_(True)
    t = text[mine].clone().requires_grad_(True)
    loss = _loss(bd.gather_with_grad(v), bd.gather_with_grad(t), labels)
    loss.backward()
    torch.save(
        {"info": (info.rank, info.world_size, info.local_rank, str(info.device)),
         "helpers": (bd.rank(), bd.world_size(), bd.is_main()),
         "loss": loss.detach(), "v": v.grad, "t": t.grad},
        os.path.join(out_dir, f"{launcher}-rank{rank}.pt"),
    )
    bd.barrier()
    torch.distributed.destroy_process_group()


def _worker(rank: int, ports: tuple[int, int], out_dir: str) -> None:
    """Each rank joins a group from torchrun's variables, then (a fresh group) from SLURM's."""
    _run_one(rank, ports[0], "torchrun", out_dir)
    _run_one(rank, ports[1], "slurm", out_dir)


@pytest.mark.distributed
def test_gather_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=((_free_port(), _free_port()), str(tmp_path)), nprocs=WORLD, join=True)
    video, text, labels = _global_batch()
    v = video.clone().requires_grad_(True)
    t = text.clone().requires_grad_(True)
    loss = _loss(v, t, labels)
    loss.backward()
    for launcher in ("torchrun", "slurm"):
        for rank in range(WORLD):
            res = torch.load(tmp_path / f"{launcher}-rank{rank}.pt")
            assert res["info"] == (rank, WORLD, rank, "cpu")
            assert res["helpers"] == (rank, WORLD, rank == 0)
            torch.testing.assert_close(res["loss"], loss.detach())
            mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            torch.testing.assert_close(res["v"], v.grad[mine], atol=1e-10, rtol=1e-8)
            torch.testing.assert_close(res["t"], t.grad[mine], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("gpu1", ["gpu1"]),
        ("a[1-2],b3", ["a1", "a2", "b3"]),
        ("r[1-2]n[08-09]", ["r1n08", "r1n09", "r2n08", "r2n09"]),
        ("node[9-11]", ["node9", "node10", "node11"]),
    ],
)
def test_expand_hostlist(nodelist, hosts):
    assert bd.expand_hostlist(nodelist) == hosts


def test_expand_hostlist_errors():
    with pytest.raises(ValueError, match="cannot parse range 'x'"):
        bd.expand_hostlist("node[x]")
    with pytest.raises(ValueError, match="names no host"):
        bd.expand_hostlist("")


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_single_process_without_launcher(clean_env):
    info = bd.init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0) and info.is_main
    assert not torch.distributed.is_initialized()
    x = torch.randn(3, 2, requires_grad=True)
    assert bd.gather_with_grad(x) is x
    assert (bd.rank(), bd.world_size(), bd.is_main()) == (0, 1, True)
    bd.barrier()
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")  # an allocation with one task: still a single process
    assert bd.init_distributed().world_size == 1


def test_slurm_environment_resolution(clean_env):
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu[12-15]")
    clean_env.setenv("SLURM_JOB_ID", "123456")
    rank, world, local, addr, port = bd._resolve_env()
    assert (rank, world, local, addr) == (5, 8, 1, "gpu12")
    assert port == str(bd.SLURM_PORT_BASE + 123456 % bd.SLURM_PORT_SPAN)
    clean_env.setenv("MASTER_PORT", "29999")
    clean_env.setenv("MASTER_ADDR", "head")
    assert bd._resolve_env()[3:] == ("head", "29999")
    # torchrun variables win over SLURM's
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "2")
    assert bd._resolve_env()[:2] == (1, 2)
    clean_env.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one'"):
        bd._resolve_env()


def test_shutdown_without_a_group_is_a_no_op():
    from bike.distributed import shutdown

    shutdown()  # nothing to leave: must not raise
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


# ------------------------------------------------------------------ leaving the group at the end of a run
#: Thread names of the c10d gloo backend and of the TCPStore (rank 0 serves it), as /proc shows them.
C10D_THREADS = ("gloo_tcp_loop", "pt_gloo_runloop", "pt_tcpstore_uv")


def _threads() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


@bd.leaves_process_group
def _a_run(fail: bool) -> float:
    """What bike.train.run / bike.evaluate.run do with the group: join it from the environment, talk."""
    bd.init_distributed(backend="gloo")
    total = bd.gather_with_grad(torch.ones(1, 2) * (bd.rank() + 1)).sum().item()
    if fail:
        raise RuntimeError("this run failed")
    return total


def _leave_worker(rank: int, port: int, out_dir: str) -> None:
    for key in ENV_KEYS:
        os.environ.pop(key, None)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist = torch.distributed
    seen: dict = {}
    # 1. the run created the group: it is gone when the run returns, with every c10d thread
    seen["total"] = _a_run(False)
    seen["after_run"] = (dist.is_initialized(), sorted(t for t in _threads() if t in C10D_THREADS))
    # 2. a group the caller made is the caller's: still there after the run
    bd.init_distributed(backend="gloo")
    _a_run(False)
    seen["caller_group_kept"] = dist.is_initialized()
    bd.shutdown()
    # 3. a failed run leaves its group alone (no barrier waiting for ranks still at work)
    try:
        _a_run(True)
    except RuntimeError:
        pass
    seen["after_failure"] = dist.is_initialized()
    dist.destroy_process_group()
    torch.save(seen, os.path.join(out_dir, f"leave-rank{rank}.pt"))


@pytest.mark.distributed
def test_a_run_leaves_the_group_it_created_and_its_threads(tmp_path):
    mp.spawn(_leave_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        seen = torch.load(tmp_path / f"leave-rank{rank}.pt")
        assert seen["total"] == 2 * (1 + 2)  # [1, 1] from rank 0, [2, 2] from rank 1: the group was real
        assert seen["after_run"] == (False, [])
        assert seen["caller_group_kept"] is True
        assert seen["after_failure"] is True


def _rejoin_worker(rank: int, port: int, out_dir: str) -> None:
    for key in ENV_KEYS:
        os.environ.pop(key, None)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if rank == 0:  # rank 0 is slow to close its group (and the store it serves on MASTER_PORT)
        destroy = torch.distributed.destroy_process_group

        def slow_destroy(*args, **kwargs):
            time.sleep(1.0)
            return destroy(*args, **kwargs)

        torch.distributed.destroy_process_group = slow_destroy
    totals = [_a_run(False) for _ in range(3)]  # e.g. a training, its resumption, an evaluation
    torch.save(totals, os.path.join(out_dir, f"rejoin-rank{rank}.pt"))


@pytest.mark.distributed
def test_runs_one_after_another_rejoin_on_the_same_port(tmp_path):
    """Rank 1 leaves first and joins its next group while rank 0 still serves the former store."""
    mp.spawn(_rejoin_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        assert torch.load(tmp_path / f"rejoin-rank{rank}.pt") == [2 * (1 + 2)] * 3


def test_the_engine_entry_points_leave_their_group():
    import bike.evaluate
    import bike.train

    for run in (bike.train.run, bike.evaluate.run):
        chain = []
        fn = run
        while fn is not None:
            chain.append(fn.__code__.co_qualname)
            fn = getattr(fn, "__wrapped__", None)
        assert "leaves_process_group.<locals>.wrapper" in chain, (run.__module__, chain)
