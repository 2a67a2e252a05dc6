"""Interrupted runs leave no traces: metrics not repeated after a resume, partial checkpoint files
removed, a corrupt latest.pt moved aside with advice, a directory named latest.pt refused at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bike.train as train_mod
from bike.engine.checkpoint import load_checkpoint
from bike.engine.logging import read_metrics
from tests.bike.engine.tinyrun import make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("interrupt_data"))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    cfg = tiny_config(data, train={"select_on": "none"})
    run = tmp_path_factory.mktemp("straight") / "run"
    train_mod.run(cfg, run, progress=False)
    return cfg, run


class _Killed(Exception):
    pass


def _lines(run: Path) -> list[tuple]:
    return [(r["kind"], r["step"]) for r in read_metrics(run)]


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "latest.pt")["model"]


def test_metrics_written_after_the_checkpoint_are_not_repeated(straight, tmp_path):
    cfg, ref = straight

    def kill_at_5(metrics, step):  # epoch 1 ended at step 3 (latest.pt); steps 4 and 5 are logged, then killed
        if metrics.get("kind") == "train" and step == 5:
            raise _Killed

    run = tmp_path / "run"
    with pytest.raises(_Killed):
        train_mod.run(cfg, run, progress=False, on_metrics=kill_at_5)
    assert [s for k, s in _lines(run) if k == "train"] == [1, 2, 3, 4, 5]
    train_mod.run(cfg, run, progress=False)
    assert _lines(run) == _lines(ref)  # every line once, in order: 1..6 and the final record
    assert "dropped 2 metrics line(s)" in (run / "log.txt").read_text()


def test_partial_checkpoint_files_are_removed_on_the_next_start(straight, tmp_path):
    cfg, ref = straight
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    partial = run / "checkpoints" / ".latest.pt.k3j2.tmp"
    partial.write_bytes(b"\0" * 4096)  # a kill during a checkpoint write
    train_mod.run(cfg, run, progress=False)
    assert not partial.exists()
    assert "removed 1 partial checkpoint file(s)" in (run / "log.txt").read_text()


def test_a_corrupt_latest_is_moved_aside_and_the_next_start_trains_from_the_beginning(straight, tmp_path):
    cfg, ref = straight
    run = tmp_path / "run"
    good = (ref / "checkpoints" / "latest.pt").read_bytes()
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=r"not a readable bikebench checkpoint.*moved to latest\.pt\.corrupt-.*run the same command again"):
        train_mod.run(cfg, run, progress=False)
    aside = list((run / "checkpoints").glob("latest.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == good[: len(good) // 2]  # kept, not deleted
    assert not (run / "checkpoints" / "latest.pt").exists()
    train_mod.run(cfg, run, progress=False)
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_directory_named_latest_is_refused_before_any_training(straight, tmp_path):
    cfg, _ = straight
    run = tmp_path / "run"
    (run / "checkpoints" / "latest.pt").mkdir(parents=True)
    with pytest.raises(ValueError, match="expected a checkpoint file, found a directory"):
        train_mod.run(cfg, run, progress=False)
    assert not [r for r in read_metrics(run) if r["kind"] == "train"]
