"""What the harness-level SLURM tests need: a tiny real video dataset, a spec over it, a driver.

`write_tiny_dataset` writes a handful of real mp4s (three colour classes); `write_spec` writes a
`full`-scale spec over them (bike-micro with random weights, 2 frames of 32 px, fp32), so no embedded
world and no pretrained weights are needed. `drive` runs a spec through `harness.drive.run_specs`
with the SLURM executor; run as a module it does the same in a separate driver process
(``python -m tests.slurm.slurm_harness SPEC RESULTS TRACKING_URI STEP_S`` from the repository root),
which a test can kill.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

#: Colour of each class's square, RGB.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
#: Frames and side of each video (H.264 needs even sides).
VIDEO_FRAMES, VIDEO_SIZE = 6, 32


def write_tiny_dataset(root: Path, per_class_train: int = 2, per_class_val: int = 1, seed: int = 0) -> dict[str, Any]:
    """Write ``root/{train,val}/<class>_<j>.mp4``, the lists and ``classes.csv``; return the spec's dataset section."""
    from bike.data.video_io import write_mp4

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = list(CLASS_COLOURS)
    (root / "classes.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    quarter = VIDEO_SIZE // 4
    for split, per in (("train", per_class_train), ("val", per_class_val)):
        lines = []
        for label, name in enumerate(names):
            for j in range(per):
                frames = rng.integers(90, 140, (VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE, 3), dtype=np.uint8)
                frames[:, quarter:3 * quarter, quarter:3 * quarter] = CLASS_COLOURS[name]
                rel = f"{split}/{name}_{j}.mp4"
                write_mp4(root / rel, frames)
                lines.append(f"{rel} {label}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return {
        "name": "tiny", "root": str(root), "train_list": str(root / "train.txt"), "val_list": str(root / "val.txt"),
        "class_file": str(root / "classes.csv"), "num_workers": 0, "tuning_holdout": 0.0,
    }


def write_spec(path: Path, name: str, dataset: dict[str, Any], variants: dict[str, dict[str, Any]],
               train: Optional[dict[str, Any]] = None, timeout_min: float = 5) -> Path:
    """A `full`-scale spec of a tiny model over ``dataset``; ``variants`` maps names to VariantSpec dicts."""
    slurm: dict[str, Any] = {"cpus_per_task": 1}
    if os.environ.get("BIKEBENCH_SLURM_PARTITION"):
        slurm["partition"] = os.environ["BIKEBENCH_SLURM_PARTITION"]
    if os.environ.get("BIKEBENCH_SLURM_ACCOUNT"):
        slurm["account"] = os.environ["BIKEBENCH_SLURM_ACCOUNT"]
    spec = {
        "name": name,
        "family": "general",
        "dataset": dataset,
        "model": {"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": VIDEO_SIZE,
                  "temporal_layers": 1},
        "attributes": {"enabled": False},
        "train": {"epochs": 1, "batch_size": 3, "warmup_epochs": 0, "precision": "fp32", "log_every": 1,
                  **(train or {})},
        "eval": {"batch_size": 3},
        "resources": {"full": {"timeout_min": timeout_min, "slurm": slurm}},
        "variants": variants,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def drive(spec_path: Path, results: Path, tracking_uri: str, target: Any = None,
          resources: Any = None, log: Any = print) -> Any:
    """``bikebench run SPEC --scale full --executor slurm`` through the Python API, with an optional
    job target for kind ``train`` (e.g. `slurm_jobs.SlowCounterTarget`) and resource overrides."""
    from harness.spec import load_spec
    from harness.drive import run_specs

    spec = load_spec(spec_path, [])
    return run_specs([spec], scale="full", cluster="slurm", results=results, tracking_uri=tracking_uri,
                     job_targets={"train": target} if target is not None else None, resources=resources,
                     poll_s=0.5, log=log)


def mlflow_runs_of(tracking_uri: str, run_id: str) -> list[Any]:
    """Every MLflow run, in any experiment, tagged with bikebench run id ``run_id``."""
    from mlflow.tracking import MlflowClient

    from harness.tracking import TAG_RUN_ID

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments, filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}'"))


if __name__ == "__main__":
    # A driver process of its own: python -m tests.slurm.slurm_harness SPEC RESULTS TRACKING_URI STEP_S
    import cloudpickle

    from tests.slurm import slurm_jobs

    cloudpickle.register_pickle_by_value(slurm_jobs)
    spec_arg, results_arg, uri_arg, step_arg = sys.argv[1:5]
    outcome = drive(Path(spec_arg), Path(results_arg), uri_arg, slurm_jobs.SlowCounterTarget(float(step_arg)))
    sys.exit(0 if outcome.ok else 1)
