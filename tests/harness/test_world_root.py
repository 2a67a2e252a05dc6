"""A command uses the world it is pointed at, or refuses with the reason; it never deletes a world."""

from __future__ import annotations

import hashlib
import json

from harness.cli import main


def _snapshot(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def test_a_world_of_another_seed_is_used_or_refused_never_replaced(tmp_path, capsys):
    root, results = tmp_path / "world", tmp_path / "results"
    assert main(["world", "build", "--size", "test", "--seed", "1", "--root", str(root)]) == 0
    assert "test seed 1" in capsys.readouterr().out
    before = _snapshot(root)

    # pointed at it without a seed: that world is used, and the command says which one it is
    assert main(["table6", "--dry-run", "--world-root", str(root), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"world {root.resolve()}: test seed 1" in out and "checkpoint sha256" in out
    assert _snapshot(root) == before

    # asked for another seed (or size): refused with the reason, nothing deleted
    for extra in (["--world-seed", "0"], ["--world-size", "default"]):
        assert main(["table6", "--dry-run", "--world-root", str(root), "--results", str(results), *extra]) == 2
        err = capsys.readouterr().err
        assert "holds the 'test' world of seed 1" in err and "nothing was deleted" in err and "--force" in err
        assert _snapshot(root) == before
    assert main(["world", "build", "--size", "test", "--seed", "0", "--root", str(root)]) == 2
    assert _snapshot(root) == before

    # replacing it is an explicit request
    assert main(["world", "build", "--size", "test", "--seed", "0", "--root", str(root), "--force"]) == 0
    assert json.loads((root / "manifest.json").read_text())["seed"] == 0
