"""Helpers of the engine's tests: a tiny on-disk dataset (real mp4 files) and a tiny run config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bike.config import RunConfig
from bike.data.video_io import write_mp4

CLASSES = ["red", "green", "blue"]
RGB = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
FRAMES, SIZE = 10, 64


def _video(rng: np.random.Generator, colour: str) -> np.ndarray:
    """A coloured square drifting over a noisy grey background, ``uint8 [FRAMES, SIZE, SIZE, 3]``."""
    frames = rng.integers(90, 140, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    x0 = int(rng.integers(0, SIZE // 2))
    for t in range(FRAMES):
        x = (x0 + 2 * t) % (SIZE - 20)
        frames[t, 20:40, x : x + 20] = RGB[colour]
    return frames


def make_dataset(root: Path, per_class_train: int = 4, per_class_val: int = 2, multi_label: bool = False) -> dict:
    """Write videos, lists and the class file under ``root``; return the DataConfig fields."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(CLASSES)))
    lines = {"train": [], "val": []}
    for split, per in (("train", per_class_train), ("val", per_class_val)):
        for k, name in enumerate(CLASSES):
            for j in range(per):
                rel = f"{split}/{name}_{j}.mp4"
                write_mp4(root / rel, _video(rng, name))
                label = f"{k},{(k + 1) % len(CLASSES)}" if (multi_label and split == "val" and j == 0) else str(k)
                lines[split].append(f"{rel} {label}")
    for split, ls in lines.items():
        (root / f"{split}.txt").write_text("\n".join(ls) + "\n")
    (root / "lexicon.txt").write_text("a red square\na green square\na blue square\na grey wall\nnoise\na circle\n")
    return {
        "dataset": "tiny",
        "root": str(root),
        "train_list": str(root / "train.txt"),
        "val_list": str(root / "val.txt"),
        "class_file": str(root / "classes.csv"),
        "num_workers": 0,
        "tuning_holdout": 0.0,
        "multi_label": multi_label,
    }


def tiny_config(data: dict, **sections) -> RunConfig:
    """bike-micro (32 px, random weights), 2 frames, 1 temporal layer, fp32, small batches."""
    base = {
        "data": dict(data),
        "model": {"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32, "temporal_layers": 1},
        "attributes": {"enabled": False, "lexicon": str(Path(data["root"]) / "lexicon.txt"), "max_attributes": 5,
                       "num_attributes": 2, "text_encoder": "bike-micro", "text_encoder_pretrained": None},
        "train": {"epochs": 2, "batch_size": 4, "warmup_epochs": 1, "precision": "fp32", "log_every": 1,
                  "lr_new": 1e-3, "lr_clip": 1e-4},
        "eval": {"batch_size": 6},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return RunConfig.model_validate(base)
