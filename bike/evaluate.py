"""Evaluate BIKE: ``python -m bike.evaluate --config run.yaml --run-dir DIR``.

Weights come from ``init_from`` (a checkpoint file, or a run directory: its best checkpoint, else its
latest); without it the pretrained CLIP is evaluated as it is (zero-shot). The protocol is
``eval.protocol``: ``closed`` (top-1/5, mean class accuracy; video, attributes and fused), ``multi_label``
(mAP, and the authors' running mAP beside it), ``zero_shot_full``, ``zero_shot_half`` (10 half-class
splits, mean ± population std), ``zero_shot_k600`` (the released split lists ``eval.k600_split_lists``: one
evaluation per split against its own class file, mean ± population std; without them, split files as class
subsets of one list). Views: ``eval.clips × eval.crops``.

``run(config, run_dir)`` writes ``config.yaml``, ``log.txt``, ``metrics.jsonl``, ``cache/<split>/`` (K600 split
lists: ``cache/<split>_k600_split{1,2,3}/``) and ``result.json``, and returns the stored result when
``result.json`` already says done.

``load_run_model(run_dir)`` gives a finished run's model, built and loaded as the engine does, for
inference outside the engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Sequence

from bike.config import RunConfig
from bike.distributed import barrier, init_distributed, leaves_process_group
from bike.engine import runner
from bike.engine.logging import RunLogger

if TYPE_CHECKING:
    from bike.engine.model import BikeModel


@runner.with_numerics
@leaves_process_group
def run(
    config: RunConfig,
    run_dir: Path,
    progress: Optional[bool] = None,
    on_metrics: Optional[Callable[[dict, int], None]] = None,
) -> dict:
    """Evaluate ``config`` into ``run_dir`` and return the result dict (see module docstring)."""
    from bike.engine.attributes_cache import ensure_attributes
    from bike.engine.datasets import class_names, split_records
    from bike.engine.eval_loop import evaluate_k600_split_lists, evaluate_split
    from bike.engine.train_loop import reseed

    run_dir = Path(run_dir)
    stored = runner.done_result(run_dir, config)
    if stored is not None:
        return stored
    start = time.time()
    info = init_distributed()
    runner.prepare_run_dir(config, run_dir, info.is_main)
    barrier()
    logger = RunLogger(run_dir, is_main=info.is_main, progress=progress, on_metrics=on_metrics)
    try:
        split = config.eval.split
        logger.info("evaluate %s: protocol %s on split %s, %d x %d views", config.content_hash(), config.eval.protocol,
                    split, config.eval.clips, config.eval.crops)
        reseed(config.seed)
        names = class_names(config)
        model = runner.build_model(config, names, info.device)
        init = runner.load_init_weights(model, config, logger, info.device)
        attrs = None
        if config.attributes.enabled and config.eval.protocol in ("closed", "multi_label"):
            records, _ = split_records(config, split)
            attrs = ensure_attributes(config, run_dir, records, info.device, logger, info.rank, info.world_size)
        if config.eval.protocol == "zero_shot_k600" and config.eval.k600_split_lists:
            out = evaluate_k600_split_lists(config, model, run_dir, info.device, logger,
                                            reuse_from=runner.reuse_sources(config))
        else:
            out = evaluate_split(config, model, run_dir, split, info.device, logger, attributes=attrs,
                                 reuse_from=runner.reuse_sources(config))
        barrier()
        if not info.is_main:
            return {"status": "done", "run_id": config.content_hash()}
        metrics, counts = out
        payload = {
            "status": "done",
            "run_id": config.content_hash(),
            "stage": config.stage,
            "split": split,
            "protocol": config.eval.protocol,
            "views": [config.eval.clips, config.eval.crops],
            "init_from": str(init) if init else None,
            "metrics": runner.split_metrics(metrics),
            "counts": {k: counts[k] for k in ("evaluated", "skipped", "bad_files")},
            "metric_counts": counts["per_metric"],
            "video_scores_from": counts.get("video_scores_from"),
            "selected_on": None,
            "world_size": info.world_size,
            "elapsed_s": time.time() - start,
        }
        if "k600_splits" in counts:
            payload["k600_splits"] = counts["k600_splits"]
        logger.metrics({"kind": "final", "split": split, **payload["metrics"]}, 0)
        from bike.engine.figures import write_run_figures

        write_run_figures(config, run_dir, model, info.device, logger)  # <run_dir>/figures/ (eval.figures videos)
        return runner.write_result(run_dir, payload)
    finally:
        logger.close()


class RunModel(NamedTuple):
    """What :func:`load_run_model` returns: the model (eval mode), the run's config, the weights loaded."""

    model: "BikeModel"
    config: RunConfig
    weights: Optional[Path]


def load_run_model(
    run_dir: str | Path,
    device: str = "cpu",
    class_names: Optional[Sequence[str]] = None,
    config: Optional[RunConfig] = None,
) -> RunModel:
    """A finished run's model, ready for inference, built the way the engine builds it.

    The config is the run's ``config.yaml`` (unless ``config`` is given); the model is built for
    ``class_names`` (default: the config's class file, as evaluation) after seeding with the run's
    seed, as evaluation does; the weights are the run's ``checkpoints/best.pt``, else its
    ``checkpoints/latest.pt``, else the config's ``init_from`` (what an evaluation run loads), else
    none (the pretrained CLIP as it is). The model is returned in eval mode on ``device``:
    ``model(clips)`` gives the unscaled video-branch logits ``[B, K]`` that ``cache/<split>/`` stores.
    """
    import torch

    from bike.engine.checkpoint import load_checkpoint, resolve_init_checkpoint
    from bike.engine.datasets import class_names as config_class_names
    from bike.engine.train_loop import reseed
    from bike.rundir import CONFIG_FILE, run_checkpoint

    run_dir = Path(run_dir)
    if config is None:
        path = run_dir / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; expected a run directory written by bike.train or bike.evaluate")
        config = RunConfig.from_yaml(path)
    torch_device = torch.device(device)
    names = list(class_names) if class_names is not None else config_class_names(config)
    reseed(config.seed)  # as evaluation does before building (matters for random initialisation only)
    model = runner.build_model(config, names, torch_device)
    weights = run_checkpoint(run_dir)
    if weights is None and config.init_from:
        weights = resolve_init_checkpoint(config.init_from)
    if weights is not None:
        model.load_weights(load_checkpoint(weights, map_location=torch_device)["model"], str(weights))
    model.eval()
    return RunModel(model, config, weights)


def main(argv: Optional[list[str]] = None) -> int:
    return runner.cli_main(argv, "bike.evaluate", "Evaluate BIKE", run)


if __name__ == "__main__":
    raise SystemExit(main())
