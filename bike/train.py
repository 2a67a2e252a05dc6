"""Train one stage of BIKE: ``python -m bike.train --config run.yaml --run-dir DIR``.

Stage ``video`` trains the video branch (image tower, temporal transformer, VCS; the category encoder
frozen unless ``model.finetune_category_encoder``). Stage ``attributes`` trains the attribute heads
afterwards, starting from the stage-1 run (``init_from``) with the video branch frozen; the
attributes are generated once and cached in ``cache/attributes.json`` (reused from the ``init_from``
run when it has them).

``run(config, run_dir)`` writes ``config.yaml``, ``log.txt``, ``metrics.jsonl``,
``checkpoints/{latest,best}.pt``, ``cache/<split>/`` and finally ``result.json``; it resumes from
``checkpoints/latest.pt`` and returns the stored result at once when ``result.json`` says done.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional


from bike.config import RunConfig
from bike.distributed import barrier, init_distributed, leaves_process_group
from bike.engine import runner
from bike.engine.logging import RunLogger


def _selection_value(metrics: dict, multi_label: bool, key_prefix: str) -> Optional[float]:
    key = f"{key_prefix}mAP" if multi_label else f"{key_prefix}top1"
    v = metrics.get(key)
    return None if v is None else float(v)


@runner.with_numerics
@leaves_process_group
def run(
    config: RunConfig,
    run_dir: Path,
    progress: Optional[bool] = None,
    on_metrics: Optional[Callable[[dict, int], None]] = None,
) -> dict:
    """Train ``config.stage`` into ``run_dir``, evaluate, and return the result (see module docstring)."""
    from bike.engine.attributes_cache import ensure_attributes
    from bike.engine.datasets import build_dataset, split_records, training_records
    from bike.engine.eval_loop import attribute_scores, closed_metrics, evaluate_split, score_videos
    from bike.engine.optim import WarmupCosineSchedule, build_optimizer
    from bike.engine.precision import make_grad_scaler
    from bike.engine.train_loop import AttributeStageTask, Trainer, VideoStageTask, broadcast_parameters, reseed

    run_dir = Path(run_dir)
    stored = runner.done_result(run_dir, config)
    if stored is not None:
        return stored
    if config.stage not in ("video", "attributes"):
        raise ValueError(f"stage={config.stage!r}: bike.train trains 'video' or 'attributes'; use bike.evaluate for 'eval'")
    start = time.time()
    info = init_distributed()
    rank, world, device = info.rank, info.world_size, info.device
    runner.prepare_run_dir(config, run_dir, info.is_main)
    barrier()
    logger = RunLogger(run_dir, is_main=info.is_main, progress=progress, on_metrics=on_metrics)
    try:
        logger.info("run %s stage %s on %d rank(s), device %s", config.content_hash(), config.stage, world, device)
        reseed(config.seed)  # identical initialisation on every rank
        train_records, names = training_records(config, run_dir if info.is_main else None)
        multi_label = config.data.multi_label
        model = runner.build_model(config, names, device)
        runner.load_init_weights(model, config, logger, device)
        model.configure_stage(
            config.stage,
            config.model.finetune_category_encoder,
            config.attributes.finetune_text_tower,
        )
        broadcast_parameters(model)
        reseed(config.seed + rank)  # per-rank streams, as the official seed + rank
        select = config.train.select_on
        eval_splits = [config.eval.split] + (["tune"] if config.data.tuning_holdout > 0 and config.eval.split != "tune" else [])
        attrs = None
        if config.attributes.enabled:
            needed = []
            for split in set(eval_splits + ([select] if select != "none" else [])):
                needed.extend(split_records(config, split)[0])
            if config.stage == "attributes":
                needed.extend(train_records)
            attrs = ensure_attributes(config, run_dir, needed, device, logger, rank, world)

        if config.stage == "video":
            dataset = build_dataset(config, train_records, train=True, num_classes=len(names),
                                    mean=model.backbone.image_mean, std=model.backbone.image_std)
            task = VideoStageTask(model, dataset, config, device, config.data.num_workers, config.seed)
        else:
            sentences = model.attributes.sentences([attrs[r.video_id] for r in train_records])
            task = AttributeStageTask(model, sentences, [int(r.label) for r in train_records], config, device, config.seed)

        validate = None
        if select != "none":
            sel_records, _ = split_records(config, select)
            if config.stage == "video":
                sel_dataset = build_dataset(config, sel_records, train=False, num_classes=len(names), views=(1, 1),
                                            mean=model.backbone.image_mean, std=model.backbone.image_std)

                def validate(epoch: int):
                    vs = score_videos(model, sel_dataset, config, device, logger, desc=f"validate {select}")
                    out = (None, {})
                    if vs is not None:
                        m = runner.split_metrics(closed_metrics("", vs.scores, vs.labels))
                        out = (_selection_value(m, multi_label, ""), m)
                    return _broadcast(out, world)
            else:
                sel_ids = [r.video_id for r in sel_records]
                sel_labels = _labels_array(sel_records, len(names), multi_label)

                def validate(epoch: int):
                    out = (None, {})
                    if rank == 0:
                        s = attribute_scores(model, sel_ids, attrs)
                        m = runner.split_metrics(closed_metrics("attr_", s, sel_labels))
                        out = (_selection_value(m, multi_label, "attr_"), m)
                    return _broadcast(out, world)

        optimizer = build_optimizer(model, config.train, model.is_pretrained)
        scheduler = WarmupCosineSchedule(optimizer, config.train.warmup_epochs, config.train.epochs)
        scaler = make_grad_scaler(config.train.precision, device)
        trainer = Trainer(config, model, task, optimizer, scheduler, scaler, run_dir, logger, device,
                          validate=validate, select_split=select)
        progress_state = trainer.fit()
        train_counts = _training_video_counts(dataset if config.stage == "video" else None, world)
        if train_counts is not None:
            logger.info(
                "training videos (this attempt): %d skipped as bad%s, %d padded (fewer frames than the clip's %d)%s",
                train_counts["skipped"], f" ({', '.join(train_counts['bad_files'][:5])})" if train_counts["skipped"] else "",
                train_counts["padded"], config.model.frames,
                f" ({', '.join(train_counts['padded_files'][:5])})" if train_counts["padded"] else "")
        barrier()

        if trainer.best_path.is_file():
            from bike.engine.checkpoint import load_checkpoint

            model.load_state_dict(load_checkpoint(trainer.best_path, map_location=device)["model"])
            model.invalidate_text_cache()
            logger.info("final evaluation with %s (epoch %s)", trainer.best_path, progress_state.best_epoch)
        results = {}
        for split in eval_splits:
            out = evaluate_split(config, model, run_dir, split, device, logger, attributes=attrs,
                                 reuse_from=runner.reuse_sources(config))
            if out is not None:
                results[split] = out
        barrier()
        if not info.is_main:
            return {"status": "done", "run_id": config.content_hash()}
        metrics, counts = results[config.eval.split]
        payload = {
            "status": "done",
            "run_id": config.content_hash(),
            "stage": config.stage,
            "split": config.eval.split,
            "metrics": runner.split_metrics(metrics),
            "counts": {k: counts[k] for k in ("evaluated", "skipped", "bad_files", "padded", "padded_files") if k in counts},
            "train_counts": train_counts,
            "metric_counts": counts["per_metric"],
            "video_scores_from": counts.get("video_scores_from"),
            "splits": {s: runner.split_metrics(m) for s, (m, _) in results.items()},
            "selected_on": select,
            "selection_note": runner.SELECTION_NOTE.format(split=select) if select != "none" else "last checkpoint (no selection)",
            "best_epoch": progress_state.best_epoch,
            "best_metric": progress_state.best_metric,
            "steps": progress_state.step,
            "world_size": world,
            "elapsed_s": time.time() - start,
        }
        logger.metrics({"kind": "final", "split": config.eval.split, **payload["metrics"]}, progress_state.step)
        from bike.engine.figures import write_run_figures

        write_run_figures(config, run_dir, model, device, logger)  # <run_dir>/figures/ (eval.figures videos)
        return runner.write_result(run_dir, payload)
    finally:
        logger.close()


def _training_video_counts(dataset, world: int) -> Optional[dict]:
    """Bad (skipped) and padded training videos of this attempt, merged over ranks (None: no video pass).

    ``{"skipped", "bad_files", "padded", "padded_files"}``; every rank takes part (a collective)."""
    if dataset is None:
        return None
    from bike.data.dataset import BadVideoLog

    report = dataset.bad_log.report()
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, report)
        report = BadVideoLog.merge_reports(gathered)
    return {k: report[k] for k in ("skipped", "bad_files", "padded", "padded_files")}


def _labels_array(records, num_classes: int, multi_label: bool):
    import numpy as np

    if not multi_label:
        return np.array([int(r.label) for r in records], dtype=np.int64)
    out = np.zeros((len(records), num_classes), dtype=np.int64)
    for i, r in enumerate(records):
        for c in (r.label if isinstance(r.label, tuple) else (r.label,)):
            out[i, c] = 1
    return out


def _broadcast(obj, world: int):
    """Rank 0's object on every rank."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main(argv: Optional[list[str]] = None) -> int:
    return runner.cli_main(argv, "bike.train", "Train one stage of BIKE", run)


if __name__ == "__main__":
    raise SystemExit(main())
