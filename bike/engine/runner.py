"""What ``bike.train.run`` and ``bike.evaluate.run`` share: run-directory files, model set-up, results.

Run directory files written here: ``config.yaml`` (when the driver has not written it; an existing one
must hold the same config), ``result.json`` (atomically, last). A run whose ``result.json`` says
``done`` is not run again.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from bike.config import ConfigError, RunConfig
from bike.engine.checkpoint import load_checkpoint, resolve_init_checkpoint
from bike.engine.logging import RunLogger, clean_metrics
from bike.metrics import Metric
from bike.rundir import CONFIG_FILE, RESULT_FILE, atomic_write_json, atomic_write_text, read_json

MetricsCallback = Callable[[dict, int], None]

SELECTION_NOTE = (
    "best checkpoint chosen by validation top-1 (mAP for multi-label) on split '{split}'; the authors "
    "selected on the same validation set they report, so numbers selected on 'val' and reported on 'val' "
    "share that optimism — select on 'tune' (held-out training videos) for an unbiased estimate"
)


def read_result(run_dir: str | Path) -> Optional[dict]:
    """The run's ``result.json``, or None when it is missing or unreadable."""
    path = Path(run_dir) / RESULT_FILE
    return read_json(path) if path.is_file() else None


def done_result(run_dir: str | Path, config: RunConfig) -> Optional[dict]:
    """The stored result when ``result.json`` says done for this config."""
    res = read_result(run_dir)
    if res and res.get("status") == "done" and res.get("run_id") == config.content_hash():
        return res
    return None


def prepare_run_dir(config: RunConfig, run_dir: Path, is_main: bool) -> None:
    """Create the directory and write ``config.yaml`` (or check that an existing one is this config)."""
    if not is_main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    if path.is_file():
        try:
            existing = RunConfig.from_yaml(path)
        except ConfigError:
            existing = None
        if existing is not None and existing.content_hash() != config.content_hash():
            raise ValueError(
                f"{path}: the run directory holds config {existing.content_hash()}, this run is "
                f"{config.content_hash()}; use the run directory of this config"
            )
        if existing is not None:
            return
    atomic_write_text(path, config.to_yaml())


#: What the running job's CPU numerics are (``bike.numerics.describe``), for ``result.json``.
_NUMERICS: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("bike_numerics", default=None)


def with_numerics(run: Callable[..., dict]) -> Callable[..., dict]:
    """Run ``run(config, run_dir, ...)`` under the config's numerics (``bike.numerics.pinned``);
    ``result.json`` then records them as ``numerics``."""
    from bike import numerics

    @functools.wraps(run)
    def wrapped(config: RunConfig, run_dir: str | Path, *args: Any, **kwargs: Any) -> dict:
        with numerics.pinned(config.numerics.pinned) as info:
            token = _NUMERICS.set(info)
            try:
                return run(config, run_dir, *args, **kwargs)
            finally:
                _NUMERICS.reset(token)

    return wrapped


def write_result(run_dir: Path, payload: dict) -> dict:
    info = _NUMERICS.get()
    if info is not None and "numerics" not in payload:
        payload = {**payload, "numerics": info}
    payload = clean_metrics(payload)
    atomic_write_json(run_dir / RESULT_FILE, payload)
    return payload


def split_metrics(metrics: dict) -> dict:
    """JSON-ready metrics (Metric -> float, NaN -> None)."""
    return clean_metrics({k: (float(v) if isinstance(v, Metric) else v) for k, v in metrics.items()})


def load_init_weights(model, config: RunConfig, logger: RunLogger, device: torch.device) -> Optional[Path]:
    """Load ``config.init_from`` (checkpoint file or run directory: best, else latest) into ``model``."""
    if not config.init_from:
        return None
    path = resolve_init_checkpoint(config.init_from)
    state = load_checkpoint(path, map_location=device)
    missing = model.load_weights(state["model"], str(path))
    logger.info("initialised from %s (%d weight(s) not in the checkpoint: %s)", path, len(missing), ", ".join(missing[:5]))
    if config.stage == "attributes" and config.attributes.logit_scale == "restart":
        # the released train_attributes.py starts from a fresh CLIP: the scale begins again at ln 1/tau
        with torch.no_grad():
            model.logit_scale.log_scale.fill_(config.logit_scale_init)
        logger.info("stage 2: logit scale restarted at %.4f (attributes.logit_scale=restart)", config.logit_scale_init)
    return path


def reuse_sources(config: RunConfig) -> list[Path]:
    """Run directories whose caches (video-branch scores, generated attributes) this run may reuse:
    its ``init_from`` run (when ``init_from`` names a run directory or a checkpoint inside one)."""
    from bike.engine.checkpoint import init_run_dir

    if not config.init_from:
        return []
    src = init_run_dir(config.init_from)
    return [Path(src)] if src is not None else []


def build_model(config: RunConfig, class_names: list[str], device: torch.device):
    from bike.engine.model import BikeModel

    return BikeModel.from_config(config, class_names, device=device)


def parse_args(argv: Optional[list[str]], prog: str, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=True, help="run config YAML (a resolved RunConfig)")
    p.add_argument("--run-dir", required=True, help="run directory (written: config.yaml, log.txt, metrics.jsonl, checkpoints/, cache/, result.json)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None, help="tqdm progress bars")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="plain log lines")
    return p.parse_args(argv)


def cli_main(argv: Optional[list[str]], prog: str, description: str, run: Callable[..., dict]) -> int:
    """Shared ``main``: 0 done, 2 bad config, 3 pre-empted (checkpoint written; run again), 1 other errors."""
    from bike.engine.train_loop import Preempted

    args = parse_args(argv, prog, description)
    try:
        config = RunConfig.from_yaml(args.config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    from bike import numerics

    if argv is None and config.numerics.pinned and not numerics.environment_is_pinned():
        # torch is imported already: start again with the pinned kernels (same arguments)
        env = dict(os.environ)
        numerics.pin_environment(env)
        sys.stdout.flush(), sys.stderr.flush()
        os.execvpe(sys.executable, [sys.executable, "-m", prog, *sys.argv[1:]], env)
    try:
        result = run(config, Path(args.run_dir), progress=args.progress)
    except Preempted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"status": result.get("status"), "run_id": result.get("run_id"), "metrics": result.get("metrics")}, default=str))
    return 0


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))
