"""A stand-in for the embedded world in harness tests: DataConfig fields and ``${world.x}`` values
without building videos or a checkpoint."""

from __future__ import annotations

from pathlib import Path

from harness.spec import WorldSplit


def fake_world(tmp: Path):
    """A ``world(split) -> WorldSplit`` provider rooted at ``tmp / "world"``."""

    def provider(split: str) -> WorldSplit:
        root = tmp / "world" / split
        return WorldSplit(
            data={"dataset": "world", "root": str(root), "val_list": str(root / "val.txt"), "class_file": str(root / "c.csv")},
            values={"checkpoint": str(tmp / "world" / "clip.pt"), "generator": None, "model": "bike-tiny", "frames": 8, "resolution": 64, "root": str(tmp / "world"),
                    "identity": {"size": "stub", "seed": 0, "config_hash": "stub", "checkpoint_sha256": "0" * 64}},
        )

    return provider
