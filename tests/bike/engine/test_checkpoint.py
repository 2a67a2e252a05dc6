"""RNG capture/restore, checkpoint writing and reading (atomic writes: tests/bike/test_rundir.py)."""

import random

import numpy as np
import pytest
import torch

from bike.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    resolve_init_checkpoint,
    init_run_dir,
    restore_rng_state,
    save_checkpoint,
)


def test_rng_roundtrip_python_numpy_torch():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    assert a == b


def test_checkpoint_roundtrip_is_weights_only_loadable(tmp_path):
    torch.manual_seed(0)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = {"model": {"w": torch.randn(3)}, "epoch": 2, "rng": capture_rng_state(), "config": "a: 1\n"}
    path = save_checkpoint(tmp_path / "checkpoints" / "latest.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 2
    restore_rng_state(loaded["rng"])
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]  # no temp file left


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="'model'"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_resolve_init_prefers_best_then_latest(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no such"):
        resolve_init_checkpoint(run)
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="best.pt"):
        resolve_init_checkpoint(run)
    save_checkpoint(run / "checkpoints" / "latest.pt", {"model": {}})
    assert resolve_init_checkpoint(run).name == "latest.pt"
    save_checkpoint(run / "checkpoints" / "best.pt", {"model": {}})
    assert resolve_init_checkpoint(run).name == "best.pt"
    assert init_run_dir(run / "checkpoints" / "best.pt") == run
