"""Callables that the SLURM tests submit, and the bookkeeping they leave on disk.

tests/slurm/conftest.py registers this module with cloudpickle *by value*, so the compute node needs
neither this file nor ``tests/`` on its ``sys.path``. Module level stays light (no torch import) so
that a job starts in well under a second; the distributed job imports torch inside.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import submitit

#: Modulus of the toy accumulator that `ResumableCounter` folds its steps into.
ACC_MODULUS = 1_000_003
#: Multiplier of the toy accumulator (any value not 1 makes the result depend on step order).
ACC_MULTIPLIER = 31


# ----------------------------------------------------------------------------------------------- arrays
def square_plus(x: int, offset: int) -> dict[str, Any]:
    """``x * x + offset`` together with where it ran (array task id, job id, process id)."""
    return {
        "value": x * x + offset,
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "pid": os.getpid(),
    }


# ----------------------------------------------------------------------------------------------- cancel
def heartbeat(path: str, seconds: float, period_s: float = 0.5) -> int:
    """Write the current time to ``path`` every ``period_s`` for ``seconds``; return beats written."""
    beats = 0
    end = time.time() + seconds
    while time.time() < end:
        Path(path).write_text(f"{time.time():.3f}\n")
        beats += 1
        time.sleep(period_s)
    return beats


# ----------------------------------------------------------------------------------------------- requeue
def accumulate(acc: int, step: int) -> int:
    """One step of the toy computation: order-dependent, so a skipped or repeated step changes the end."""
    return (acc * ACC_MULTIPLIER + step + 1) % ACC_MODULUS


def uninterrupted_result(steps: int) -> int:
    """What `ResumableCounter` returns when nothing interrupts it."""
    acc = 0
    for step in range(steps):
        acc = accumulate(acc, step)
    return acc


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


class ResumableCounter(submitit.helpers.Checkpointable):
    """A "training run" of ``steps`` steps that keeps its state in ``workdir/checkpoint.json``.

    Every start appends one JSON line to ``workdir/starts.jsonl``: the step it resumed from, the
    SLURM restart count and the step duration in force. On a timeout or preemption signal, submitit
    calls `checkpoint`, which requeues this object with ``resumed_step_s`` as the step duration (so
    that a resumed run finishes before SLURM's next time-limit check); after an external
    ``scontrol requeue`` (no signal reaches Python) the job restarts from the original submission
    and still resumes from the checkpoint file.
    """

    def __call__(self, workdir: str, steps: int, step_s: float, resumed_step_s: Optional[float] = None) -> int:
        root = Path(workdir)
        ckpt = root / "checkpoint.json"
        state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "acc": 0}
        with (root / "starts.jsonl").open("a") as f:
            f.write(json.dumps({
                "from_step": state["step"],
                "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
                "step_s": step_s,
                "job_id": os.environ.get("SLURM_JOB_ID"),
            }) + "\n")
        for step in range(state["step"], steps):
            time.sleep(step_s)
            state = {"step": step + 1, "acc": accumulate(state["acc"], step)}
            _write_json_atomic(ckpt, state)
        return int(state["acc"])

    def checkpoint(self, workdir: str, steps: int, step_s: float,
                   resumed_step_s: Optional[float] = None) -> submitit.helpers.DelayedSubmission:
        """Requeue with the resumed step duration; the progress itself lives in the checkpoint file."""
        next_step_s = step_s if resumed_step_s is None else resumed_step_s
        return submitit.helpers.DelayedSubmission(ResumableCounter(), workdir, steps, next_step_s, resumed_step_s)


def read_starts(workdir: str | Path) -> list[dict[str, Any]]:
    """The lines `ResumableCounter` appended to ``starts.jsonl``, one per start."""
    path = Path(workdir) / "starts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checkpoint_step(workdir: str | Path, name: str = "checkpoint.json") -> int:
    """The step recorded in ``workdir/name`` (0 before the first step)."""
    path = Path(workdir) / name
    try:
        return int(json.loads(path.read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


# ----------------------------------------------------------------------------------------------- distributed
def train_tiny_gathered(steps: int, global_batch: int, seed: int = 0, lr: float = 0.5,
                        temperature: float = 0.1) -> dict[str, Any]:
    """Train a 6->4 linear embedder a few SGD steps with a loss over the *global* batch.

    Each of the W processes (``bike.distributed.init_distributed``: SLURM or torchrun environment, or
    a single process) embeds its own ``global_batch / W`` rows, ``gather_with_grad`` concatenates
    them into ``[global_batch, 4]``, every process computes the same cross-entropy against fixed
    class embeddings ``[3, 4]``, and gradients are summed over processes (the gather's backward
    hands each process only its own rows' share). With the same global batch the weights must match
    a single process.

    Returns:
        ``{"rank", "world", "local_rank", "weight" [4][6], "bias" [4], "losses" [steps], "env"}``.
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        raise RuntimeError("train_tiny_gathered: a process group already exists in this process; "
                           "it must build its own from the environment")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from bike.distributed import shutdown

    try:
        result = _train_tiny_gathered(steps, global_batch, seed, lr, temperature)
        shutdown()  # every rank done talking before the group goes (a bare destroy aborted a task at exit once)
        return result
    finally:
        torch.set_num_threads(threads)
        if dist.is_available() and dist.is_initialized():  # after an error: no barrier a dead peer would hang
            dist.destroy_process_group()


def _train_tiny_gathered(steps: int, global_batch: int, seed: int, lr: float, temperature: float) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from bike.distributed import gather_with_grad, init_distributed

    info = init_distributed(backend="gloo")
    if global_batch % info.world_size:
        raise ValueError(f"global_batch={global_batch} is not divisible by world size {info.world_size}")
    local = global_batch // info.world_size

    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 6, generator=gen) * 0.5)
        model.bias.copy_(torch.randn(4, generator=gen) * 0.1)
    classes = F.normalize(torch.randn(3, 4, generator=gen), dim=-1)   # [K=3, D=4]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses: list[float] = []
    for _ in range(steps):
        x = torch.randn(global_batch, 6, generator=gen)                  # [G, 6], same on every rank
        y = torch.randint(0, 3, (global_batch,), generator=gen)          # [G]
        mine = x[info.rank * local:(info.rank + 1) * local]              # [G/W, 6]
        emb = F.normalize(model(mine), dim=-1)                           # [G/W, 4]
        every = gather_with_grad(emb)                                    # [G, 4]
        loss = F.cross_entropy(every @ classes.T / temperature, y)
        opt.zero_grad()
        loss.backward()
        if info.world_size > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        opt.step()
        losses.append(float(loss.detach()))
    return {
        "rank": info.rank,
        "world": info.world_size,
        "local_rank": info.local_rank,
        "weight": model.weight.detach().tolist(),
        "bias": model.bias.detach().tolist(),
        "losses": losses,
        "env": {k: os.environ.get(k) for k in
                ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "MASTER_ADDR", "MASTER_PORT")},
    }


# ----------------------------------------------------------------------------------------------- harness
class SlowCounterTarget:
    """A job target of the harness (``fn(config, run_dir) -> result``) that trains nothing but keeps the
    engine's contract: progress in ``run_dir/checkpoints/latest.json``, one ``metrics.jsonl`` line
    per step, resume from the checkpoint, a result dict at the end.

    ``config.train.max_steps`` steps of ``step_s`` seconds; ``resumed_step_s`` once a checkpoint exists
    (so that a resumed job ends before SLURM's next time-limit check). Every start appends a line to
    ``run_dir/starts.jsonl`` (see `read_starts`). It imports no torch, so a job starts in about a second.
    """

    def __init__(self, step_s: float, resumed_step_s: Optional[float] = None):
        self.step_s = step_s
        self.resumed_step_s = step_s if resumed_step_s is None else resumed_step_s

    def __call__(self, config: Any, run_dir: str | Path) -> dict[str, Any]:
        root = Path(run_dir)
        steps = int(config.train.max_steps)
        ckpt = root / "checkpoints" / "latest.json"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "acc": 0}
        step_s = self.resumed_step_s if ckpt.exists() else self.step_s
        with (root / "starts.jsonl").open("a") as f:
            f.write(json.dumps({"from_step": state["step"], "step_s": step_s,
                                "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
                                "job_id": os.environ.get("SLURM_JOB_ID")}) + "\n")
        for step in range(state["step"], steps):
            time.sleep(step_s)
            state = {"step": step + 1, "acc": accumulate(state["acc"], step)}
            _write_json_atomic(ckpt, state)
            with (root / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"kind": "train", "step": step + 1, "acc": state["acc"]}) + "\n")
        return {"run_id": config.content_hash(), "acc": int(state["acc"]), "metrics": {"steps": steps}}
