"""bike.rundir: atomic writes of bytes, text, JSON, NumPy and torch objects; leftovers removed."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch

from bike import rundir
from bike.rundir import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_npz,
    atomic_write_text,
    atomic_write_torch,
    read_json,
    remove_partial_writes,
    run_checkpoint,
)


def test_every_writer_replaces_the_whole_file_and_leaves_no_temporaries(tmp_path):
    d = tmp_path / "sub"
    atomic_write_bytes(d / "b.bin", b"\x00\x01")
    atomic_write_text(d / "t.txt", "old")
    atomic_write_text(d / "t.txt", "new\n")
    atomic_write_json(d / "j.json", {"b": np.int64(3), "a": np.float32(0.5), "c": np.arange(2), "p": d})
    atomic_write_npy(d / "a.npy", np.arange(3, dtype=np.int64))
    atomic_write_npz(d / "z.cache", x=np.ones(2))  # no .npz suffix added
    atomic_write_torch(d / "m.pt", {"w": torch.ones(2)})
    assert sorted(os.listdir(d)) == ["a.npy", "b.bin", "j.json", "m.pt", "t.txt", "z.cache"]
    assert (d / "b.bin").read_bytes() == b"\x00\x01" and (d / "t.txt").read_text() == "new\n"
    assert (d / "j.json").read_text() == json.dumps({"a": 0.5, "b": 3, "c": [0, 1], "p": str(d)}, indent=2, sort_keys=True) + "\n"
    assert np.load(d / "a.npy").tolist() == [0, 1, 2]
    assert np.load(d / "z.cache")["x"].tolist() == [1.0, 1.0]
    assert torch.equal(torch.load(d / "m.pt", weights_only=True)["w"], torch.ones(2))
    assert read_json(d / "j.json")["b"] == 3 and read_json(d / "missing.json") is None


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"status": "done"})

    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": Boom()})
    assert json.loads(target.read_text()) == {"status": "done"}
    assert sorted(os.listdir(tmp_path)) == ["result.json"]
    atomic_write_json(target, {"x": Boom()}, default=lambda o: "boom")
    assert json.loads(target.read_text()) == {"x": "boom"}


def test_an_interrupted_write_leaves_a_named_temporary_that_is_removed(tmp_path):
    target = tmp_path / "checkpoints" / "latest.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".latest.pt.") and tmp.name.endswith(".tmp")
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert not target.exists() and list(target.parent.iterdir()) == []
    leftover = target.parent / ".latest.pt.ab12.tmp"  # a killed process cannot clean up
    leftover.write_bytes(b"half")
    assert remove_partial_writes(target.parent) == [leftover] and not leftover.exists()


def test_run_checkpoint_prefers_best_then_latest(tmp_path):
    assert run_checkpoint(tmp_path) is None
    (tmp_path / rundir.CHECKPOINT_DIR / rundir.BEST).mkdir(parents=True)  # a directory is not a checkpoint
    assert run_checkpoint(tmp_path) is None
    atomic_write_bytes(tmp_path / "checkpoints" / "latest.pt", b"x")
    assert run_checkpoint(tmp_path) == tmp_path / "checkpoints" / "latest.pt"
    (tmp_path / "checkpoints" / "best.pt").rmdir()
    atomic_write_bytes(tmp_path / "checkpoints" / "best.pt", b"x")
    assert run_checkpoint(tmp_path) == tmp_path / "checkpoints" / "best.pt"


def _short_write(f):
    """What torch.save does when the disk fills up mid-checkpoint: part written, then a RuntimeError."""
    f.write(b"\x00" * 4096)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3449722432 vs 3449722320")


def test_a_write_on_a_full_filesystem_says_so_and_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "latest.pt"
    usage = type("Usage", (), {"free": 3 * 2**20})()  # 3 MiB left, under rundir.LOW_SPACE_BYTES
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda _d: usage)
    with pytest.raises(rundir.NoSpaceError) as info:
        rundir.atomic_write(target, _short_write)
    msg = str(info.value)
    assert str(target) in msg and "no space left" in msg and "3 MiB free" in msg and "unexpected pos" in msg
    assert info.value.errno == errno.ENOSPC and isinstance(info.value.__cause__, RuntimeError)
    assert os.listdir(target.parent) == []  # the partial temporary is gone


def test_enospc_from_the_writer_is_reported_whatever_the_free_space(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(rundir.NoSpaceError, match="no space left"):
        rundir.atomic_write(tmp_path / "m.pt", full)


def test_other_write_errors_pass_through_unchanged_when_there_is_room(tmp_path, monkeypatch):
    usage = type("Usage", (), {"free": 50 * 2**30})()
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda _d: usage)
    with pytest.raises(RuntimeError, match="unexpected pos") as info:
        rundir.atomic_write(tmp_path / "m.pt", _short_write)
    assert not isinstance(info.value, OSError)
