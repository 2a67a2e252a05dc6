"""Makefile targets that do more than call one command, run for real against a stand-in `bikebench`."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent

# A stand-in for the installed CLI: records its arguments and writes the table6.md a real run ends with.
FAKE_BIKEBENCH = """#!/bin/bash
echo "$@" >> "$FAKE_LOG"
if [ "$1" = directions ]; then echo "side by side: ${@:2}"; exit 0; fi
seed=0; results=results
while [ $# -gt 0 ]; do
  case "$1" in --world-seed) seed=$2; shift;; --results) results=$2; shift;; esac; shift
done
mkdir -p "$results"
printf '# Table 6\\n\\n## Ablation directions: %d of 46 reproduced (x %%)\\n\\nMissed:\\n' $((30 + seed)) > "$results/table6.md"
"""


def _checkout(tmp_path: Path, bikebench: str) -> Path:
    """A copy of the Makefile beside an installed-looking venv whose `bikebench` is ``bikebench``."""
    work = tmp_path / "repo"
    (work / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", work / "Makefile")
    (work / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for name, body in (("python", "#!/bin/bash\nexit 0\n"), ("bikebench", bikebench)):
        (work / ".venv" / "bin" / name).write_text(body)
        (work / ".venv" / "bin" / name).chmod(0o755)
    time.sleep(0.01)
    (work / ".venv" / ".installed").touch()  # newer than pyproject.toml: `setup` has nothing to do
    return work


def test_table6_worlds_runs_each_seed_in_its_own_results_directory_and_compares_their_directions(tmp_path):
    work = _checkout(tmp_path, FAKE_BIKEBENCH)
    log = tmp_path / "calls.txt"
    out = subprocess.run(["make", "-s", "table6-worlds", "WORLD_SEEDS=0 2 5", "ARGS=--no-track model.frames=4"],
                         cwd=work, env={**os.environ, "FAKE_LOG": str(log)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 4
    for call, seed, results in zip(calls, (0, 2, 5), ("results", "results/world-seed2", "results/world-seed5")):
        args = call.split()
        assert args[0] == "table6"
        assert args[args.index("--world-seed") + 1] == str(seed)
        assert args[args.index("--results") + 1] == results
        assert args[-2:] == ["--no-track", "model.frames=4"]
    # then the three worlds' directions side by side, in the order of WORLD_SEEDS
    assert calls[3].split() == ["directions", "results", "results/world-seed2", "results/world-seed5",
                                "--out", "results/directions_worlds.md"]
    assert out.stdout.strip().splitlines()[-1] == (
        "side by side: results results/world-seed2 results/world-seed5 --out results/directions_worlds.md")


def test_table6_worlds_stops_at_the_first_failing_seed(tmp_path):
    work = _checkout(tmp_path, '#!/bin/bash\necho "$@" >> "$FAKE_LOG"\nexit 3\n')
    log = tmp_path / "calls.txt"
    out = subprocess.run(["make", "-s", "table6-worlds", "WORLD_SEEDS=0 1"], cwd=work,
                         env={**os.environ, "FAKE_LOG": str(log)}, capture_output=True, text=True)
    assert out.returncode != 0
    assert len(log.read_text().splitlines()) == 1  # neither the next seed nor `bikebench directions`


def test_clean_results_cleans_every_results_directory_but_keeps_the_worlds_and_committed_files(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    made = ["README.md", "baselines/table6_smoke.json", "world/manifest.json", "runs/abc/result.json",
            "cache/attributes/k.json", "figures/table6/6a.png", "mlflow.db", "table6.md", "table6_results.json",
            "table6_results_smoke.json", "table6_lambda.json", "table6.html", "paper.md", "paper_results.json"]
    for root in ("results", "results/world-seed1"):
        for name in made:
            (tmp_path / root / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / root / name).write_text("x")
    out = subprocess.run(["make", "-s", "clean-results"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for root in ("results", "results/world-seed1"):
        left = sorted(str(p.relative_to(tmp_path / root)) for p in (tmp_path / root).rglob("*") if p.is_file())
        kept = ["README.md", "baselines/table6_smoke.json", "world/manifest.json"]
        assert [p for p in left if not p.startswith("world-seed1")] == kept
