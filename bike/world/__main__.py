"""``python -m bike.world build --root DIR --size default|test --seed N [--force]`` and ``info --root DIR``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence

from bike.world.build import WorldError, build_world, default_root, load_world
from bike.world.config import SIZES


def _summary(info) -> dict:
    return {
        "root": str(info.root), "size": info.size, "seed": info.seed, "config_hash": info.config_hash,
        "model": info.model_name, "checkpoint": str(info.checkpoint), "frames": info.frames,
        "resolution": info.resolution, "counts": info.counts, "metrics": info.metrics, "timings": info.timings,
        **({"backbone_checkpoint": str(info.backbone_checkpoint)} if info.backbone_checkpoint else {}),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bike.world", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the world (a no-op when it is already built)")
    b.add_argument("--root", default=None, help=f"world directory (default: ${'{'}BIKEBENCH_WORLD{'}'} or results/world)")
    b.add_argument("--size", default="default", choices=sorted(SIZES))
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    b.add_argument("--workers", type=int, default=None, help="processes (1 serial, 2 videos beside pretraining)")
    i = sub.add_parser("info", help="print the manifest summary of a built world")
    i.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = args.root or default_root()
    try:
        if args.command == "build":
            logging.basicConfig(level=logging.WARNING)  # progress is printed; open_clip logs at INFO
            t0 = time.perf_counter()
            info = build_world(root, size=args.size, seed=args.seed, force=args.force, workers=args.workers,
                               progress=lambda msg: print(msg, flush=True))
            print(json.dumps({**_summary(info), "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
        else:
            print(json.dumps(_summary(load_world(root)), indent=2))
    except WorldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
