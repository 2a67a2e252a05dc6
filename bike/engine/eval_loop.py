"""Evaluation: scores of every video of a split (single or multi-view), metrics of every protocol, caches.

Views stream through a :class:`~bike.metrics.ViewAggregator` (a running sum per video id), so memory
does not grow with the number of views; every video is counted once (the evaluation sampler never
pads). Per-view logits of multi-view runs are spilled to disk as they come and assembled into
``view_scores.npy [N, V, K]``.

Scores per view:

* ``video`` mode: the video branch's unscaled logits ``[B, K]`` (aggregated by
  ``eval.view_aggregation``: mean of per-view softmax at temperature 1, or mean of logits);
* ``frame`` mode (zero-shot frame-level path): mean over frames of the per-frame softmax at scale 100
  of the raw image features against the normalised class [CLS] embeddings (probabilities, averaged).

The attributes branch scores each video once (its attribute sentence does not depend on the view).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from bike.config import RunConfig
from bike.data.dataset import BadDataError, BadVideoLog
from bike.engine.caches import (
    SplitResult,
    column_subset,
    evaluate_class_splits,
    k600_split_cache_name,
    split_cache_dir,
    write_cache,
)
from bike.engine.logging import RunLogger
from bike.engine.precision import autocast
from bike.engine.zero_shot import FRAME_SOFTMAX_SCALE, frame_level_scores, frame_level_scores_np
from bike.fusion import ScoreKind, fuse, score_transform, softmax
from bike.metrics import (
    Metric,
    ViewAggregator,
    charades_running_map,
    mean_average_precision,
    mean_class_accuracy,
    single_label_map,
    topk_accuracy,
)

SPILL_SUFFIX = ".spill"


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class VideoScores:
    """Per-video output of one pass (rows in the dataset's record order; only complete on rank 0)."""

    video_ids: list[str]
    labels: np.ndarray  # [N] or [N, K]
    scores: np.ndarray  # [N, K]
    score_kind: ScoreKind
    views: int
    class_emb: np.ndarray  # [K, D]
    frame_emb: Optional[np.ndarray] = None  # [N, T, D]
    view_scores: Optional[np.ndarray] = None  # [N, V, K] float16 (memory map)
    counts: dict = field(default_factory=dict)


class _ViewSpill:
    """Appends per-view float16 logits ``[K]`` of one rank to a file, with their (video, view) keys."""

    def __init__(self, path: Path, num_classes: int):
        self.path, self.k = path, num_classes
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "wb")
        self.keys: list[tuple[str, int]] = []

    def add(self, ids: Sequence[str], views: Sequence[int], logits: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(logits, dtype=np.float16).tobytes())
        self.keys.extend((str(v), int(w)) for v, w in zip(ids, views))

    def close(self) -> None:
        self.f.close()


def _assemble_views(spills: list[tuple[Path, list]], order: dict[str, int], num_views: int, k: int, out_path: Path) -> np.ndarray:
    """Fill ``[N, V, K]`` float16 at ``out_path`` from every rank's spill file (chunk by chunk)."""
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float16, shape=(len(order), num_views, k))
    for path, keys in spills:
        if not keys:
            path.unlink(missing_ok=True)
            continue
        data = np.memmap(path, dtype=np.float16, mode="r", shape=(len(keys), k))
        rows = np.array([order.get(v, -1) for v, _ in keys])
        cols = np.array([w for _, w in keys])
        ok = rows >= 0
        out[rows[ok], cols[ok]] = data[ok]
        del data
        path.unlink(missing_ok=True)
    out.flush()
    return out


@torch.no_grad()
def score_videos(
    model,
    dataset,
    config: RunConfig,
    device: torch.device,
    logger: Optional[RunLogger] = None,
    mode: str = "video",
    collect_frames: bool = False,
    view_scores_path: Optional[Path] = None,
    desc: str = "eval",
) -> Optional[VideoScores]:
    """Score every video of ``dataset`` (a ``VideoDataset`` in test mode). Returns the result on rank 0."""
    from bike.engine.datasets import eval_loader

    rank, world = _world()
    model.eval()
    k = model.num_classes
    v = dataset.num_views
    text = model.class_text()
    mask = model.word_mask() if config.model.needs_word_mask else None
    # one view: keep the logits themselves (their softmax is the fusion transform); several views:
    # eval.view_aggregation. The frame-level path already gives probabilities: average them.
    agg_mode = config.eval.view_aggregation if (mode == "video" and v > 1) else "logit_mean"
    agg = ViewAggregator(k, mode=agg_mode)
    frames_sum: dict[str, torch.Tensor] = {}
    spill = None
    if view_scores_path is not None and v > 1:
        spill = _ViewSpill(view_scores_path.with_name(f".{view_scores_path.name}.rank{rank}{SPILL_SUFFIX}"), k)
    loader = eval_loader(dataset, config.eval.batch_size, config.data.num_workers, world, rank)
    batches = logger.iterate(loader, len(loader), desc) if logger else loader
    failure: Optional[str] = None
    try:
        for batch in batches:
            clips = batch.clips.to(device, non_blocking=True)
            with autocast(config.train.precision, device):
                frames = model.frame_features(clips)
                if mode == "video":
                    out = model.video_logits(frames, text, mask)
            frames = frames.float()
            if mode == "frame":
                out = frame_level_scores(frames, text.cls, FRAME_SOFTMAX_SCALE)
            logits = out.float().cpu().numpy()
            views = batch.views.tolist()
            agg.add(batch.video_ids, logits, batch.labels.cpu().numpy(), view_indices=views)
            if spill is not None:
                spill.add(batch.video_ids, views, logits)
            if collect_frames:
                for vid, f in zip(batch.video_ids, frames.cpu()):
                    frames_sum[vid] = frames_sum[vid] + f if vid in frames_sum else f.clone()
    except BadDataError as exc:  # strict evaluation met bad videos: every rank must learn it
        if world == 1:
            raise
        failure = str(exc)
    finally:
        if spill is not None:
            spill.close()
    report = dataset.bad_log.report()
    state = agg.state()
    spill_info = (spill.path, spill.keys) if spill is not None else None
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (state, {k_: t.numpy() for k_, t in frames_sum.items()}, report, spill_info, failure))
        failures = [g[4] for g in gathered if g[4]]
        if failures:
            raise BadDataError("\n".join(failures))
        if rank != 0:
            return None
        agg = ViewAggregator(k, mode=agg_mode)
        frames_np: dict[str, np.ndarray] = {}
        reports, spills = [], []
        for st, fr, rep, sp, _ in gathered:
            agg.merge(st)
            frames_np.update(fr)
            reports.append(rep)
            if sp is not None:
                spills.append(sp)
        report = BadVideoLog.merge_reports(reports)
    else:
        frames_np = {k_: t.numpy() for k_, t in frames_sum.items()}
        spills = [spill_info] if spill_info is not None else []
    res = agg.result(expected_views=v)
    # rows in the dataset's record order, independent of the number of ranks
    position = {r.video_id: i for i, r in enumerate(dataset.records)}
    order = np.argsort([position[i] for i in res.video_ids], kind="stable")
    ids = [res.video_ids[i] for i in order]
    frame_emb = None
    if collect_frames and ids:
        counts = res.views[order]
        frame_emb = np.stack([frames_np[i] for i in ids]).astype(np.float32) / counts[:, None, None]
    view_scores = None
    if spills and view_scores_path is not None:
        view_scores = _assemble_views(spills, {vid: r for r, vid in enumerate(ids)}, v, k, view_scores_path)
    kind: ScoreKind = "logits" if (mode == "video" and agg_mode == "logit_mean") else "probabilities"
    return VideoScores(
        video_ids=ids,
        labels=res.labels[order] if res.labels is not None else np.zeros(len(ids), dtype=np.int64),
        scores=res.scores[order],
        score_kind=kind,
        views=v,
        class_emb=text.cls.float().cpu().numpy(),
        frame_emb=frame_emb,
        view_scores=view_scores,
        counts=report,
    )


@torch.no_grad()
def attribute_scores(model, video_ids: Sequence[str], attributes: dict[str, list[str]]) -> np.ndarray:
    """Attributes-branch scores ``[N, K]`` (cosine) of the videos from their cached ranked phrases."""
    if model.attributes is None:
        raise ValueError("attribute_scores: the model has no attributes branch (attributes.enabled is false)")
    missing = [v for v in video_ids if v not in attributes]
    if missing:
        raise KeyError(f"no generated attributes for {len(missing)} video(s), e.g. {missing[0]!r}")
    model.eval()
    ranked = [attributes[v] for v in video_ids]
    s = model.attributes.score(model.attribute_text_encoder, ranked, model.class_names)
    return s.float().cpu().numpy()


# ------------------------------------------------------------------------------ metrics
def closed_metrics(prefix: str, scores: np.ndarray, labels: np.ndarray) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    if labels.ndim == 2:
        out[f"{prefix}mAP"] = mean_average_precision(scores, labels)
        return out
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    out[f"{prefix}top1"], out[f"{prefix}top5"] = acc["top1"], acc["top5"]
    out[f"{prefix}mean_class"] = mean_class_accuracy(scores, labels)
    return out


def protocol_metrics(
    config: RunConfig,
    vs: VideoScores,
    attr: Optional[np.ndarray],
    world_size: int = 1,
) -> dict[str, Metric | float]:
    """Every metric of ``config.eval.protocol`` from per-video scores (and attribute scores).

    ``zero_shot_k600`` here is the single-list form (``eval.k600_split_files`` as class subsets of
    ``data.class_file``); the released split lists are :func:`evaluate_k600_split_lists`'s."""
    protocol = config.eval.protocol
    labels = vs.labels
    metrics: dict[str, Metric | float] = {}
    if protocol in ("closed", "multi_label"):
        metrics.update(closed_metrics("video_", vs.scores, labels))
        head = dict(closed_metrics("", vs.scores, labels))
        if attr is not None:
            metrics.update(closed_metrics("attr_", attr, labels))
            fused = fuse(vs.scores, attr, config.fusion_lambda, config.fusion.transform, kind_v=vs.score_kind, dtype=np.float64)
            metrics.update(closed_metrics("fused_", fused, labels))
            head = closed_metrics("", fused, labels)
            metrics["fusion_lambda"] = config.fusion_lambda
        metrics.update(head)
        if labels.ndim == 1:
            # ActivityNet's mAP as the released test computes it (bike.metrics.single_label_map)
            metrics["video_mAP"] = single_label_map(score_transform(vs.scores, "softmax", score_kind=vs.score_kind), labels)
            metrics["mAP"] = metrics["video_mAP"] if attr is None else single_label_map(fused, labels)
        if labels.ndim == 2:
            probs = score_transform(vs.scores, "softmax", score_kind=vs.score_kind)
            # the released Charades test softmaxes the view-averaged softmax once more, then averages running mAPs
            metrics["mAP_official_running"] = charades_running_map(softmax(probs), labels, config.eval.batch_size * world_size,
                                                                   world_size=world_size)
        return metrics
    if labels.ndim != 1:
        raise ValueError(f"eval.protocol={protocol!r} needs single-label videos")
    ties = config.eval.zero_shot_ties
    full = topk_accuracy(vs.scores, labels, ks=(1, 5), ties=ties)
    metrics.update({"top1": full["top1"], "top5": full["top5"], "zs_full_top1": full["top1"], "zs_full_top5": full["top5"],
                    "mean_class": mean_class_accuracy(vs.scores, labels)})
    if protocol == "zero_shot_full":
        return metrics
    if config.eval.zero_shot_path == "frame":
        if vs.frame_emb is None:
            raise ValueError("the frame-level zero-shot path needs the frame embeddings of the pass")
        fe, ce = vs.frame_emb, vs.class_emb
        fn = lambda rows, cols: frame_level_scores_np(fe[rows], ce[cols], FRAME_SOFTMAX_SCALE)  # noqa: E731
    else:
        fn = column_subset(vs.scores)
    if protocol == "zero_shot_half":
        from bike.protocols import half_class_splits

        res = evaluate_class_splits(labels, half_class_splits(vs.scores.shape[1], config.eval.zero_shot_splits), fn, ties)
        metrics.update(res.metrics("zs_half"))
    elif protocol == "zero_shot_k600":
        if config.eval.k600_split_lists:
            raise ValueError("eval.k600_split_lists: each split list is its own evaluation (evaluate_k600_split_lists), "
                             "not class subsets of one list's scores")
        from bike.protocols import k600_splits
        from bike.data.lists import read_classes

        splits = k600_splits(config.eval.k600_split_files, read_classes(config.data))
        res = evaluate_class_splits(labels, splits, fn, ties)
        metrics.update(res.metrics("zs_k600"))
    else:
        raise ValueError(f"unknown eval.protocol {protocol!r}")
    return metrics


def metric_counts(metrics: dict) -> dict[str, dict[str, int]]:
    return {k: v.counts for k, v in metrics.items() if isinstance(v, Metric)}


def _scores_from_cache(cache, views: int) -> VideoScores:
    """A :class:`VideoScores` from a reused cache (its bad-video report comes from its manifest)."""
    report = cache.extra.get("counts", {})
    return VideoScores(
        video_ids=list(cache.video_ids),
        labels=np.asarray(cache.labels),
        scores=np.asarray(cache.video_scores),
        score_kind=cache.score_kind,
        views=views,
        class_emb=np.asarray(cache.class_emb) if cache.class_emb is not None else np.zeros((cache.num_classes, 0), np.float32),
        frame_emb=None if cache.frame_emb is None else np.asarray(cache.frame_emb),
        view_scores=None if cache.view_scores is None else np.asarray(cache.view_scores),
        counts={"skipped": int(report.get("skipped", 0)), "bad_files": list(report.get("bad_files", [])),
                "padded": int(report.get("padded", 0)), "padded_files": list(report.get("padded_files", []))},
    )


# ------------------------------------------------------------------------------ whole split
def evaluate_split(
    config: RunConfig,
    model,
    run_dir: Path,
    split: str,
    device: torch.device,
    logger: Optional[RunLogger] = None,
    attributes: Optional[dict[str, list[str]]] = None,
    views: Optional[tuple[int, int]] = None,
    write: bool = True,
    reuse_from: Sequence[Optional[str | Path]] = (),
    cache_name: Optional[str] = None,
    resume: bool = False,
) -> Optional[tuple[dict, dict]]:
    """Evaluate ``split`` per ``config.eval`` and write ``cache/<cache_name>/``. Returns (metrics, counts) on rank 0.

    ``reuse_from``: run directories (e.g. the ``init_from`` run) whose cached video-branch scores of
    ``split`` are copied instead of scoring the videos again when their video-side key equals this
    run's (:mod:`bike.engine.score_reuse`); the result says which (``counts["video_scores_from"]``).
    ``cache_name``: the cache directory (default ``split``; the K600 split lists write one each).
    ``resume``: the run's own finished cache of ``cache_name`` is reused as well, under the same key
    (an interrupted multi-split evaluation does not score its finished splits again).
    """
    from bike.engine.datasets import build_dataset, split_records
    from bike.engine.score_reuse import KEY_FIELD, find_reusable, video_side_key

    cache_name = cache_name or split
    rank, world = _world()
    records, names = split_records(config, split)
    if list(names) != list(model.class_names):
        model.set_classes(names)
    views = views or (config.eval.clips, config.eval.crops)
    dataset = build_dataset(config, records, train=False, num_classes=len(names), views=views,
                            mean=model.backbone.image_mean, std=model.backbone.image_std)
    protocol = config.eval.protocol
    mode = "frame" if protocol.startswith("zero_shot") and config.eval.zero_shot_path == "frame" else "video"
    collect = config.eval.save_frame_embeddings or (mode == "frame" and protocol != "zero_shot_full")
    cache_dir = split_cache_dir(run_dir, cache_name)
    vs_path = cache_dir / ".view_scores.assemble.npy" if write else None
    key = video_side_key(config, model, split, records, names, views, mode, collect)
    # rank 0 alone reads the candidate caches and decides for every rank: ranks that disagreed (a
    # file seen by one node only) would leave the others waiting in score_videos' collectives
    reused = None
    if rank == 0:
        others = [d for d in reuse_from if d is not None and Path(d).resolve() != Path(run_dir).resolve()]
        reused = find_reusable(key, cache_name, ([run_dir] if resume else []) + others)
    use_cache = reused is not None
    if world > 1:
        box = [use_cache]
        dist.broadcast_object_list(box, src=0)
        use_cache = bool(box[0])
    if use_cache:
        if logger and reused is not None:
            logger.info("eval %s: video-branch scores of %d videos reused from %s (same video-side key)",
                        cache_name, reused.num_videos, reused.directory)
        vs = _scores_from_cache(reused, dataset.num_views) if reused is not None else None
    else:
        vs = score_videos(model, dataset, config, device, logger, mode=mode, collect_frames=collect,
                          view_scores_path=vs_path, desc=f"eval {cache_name}")
    attr = None
    if config.attributes.enabled and attributes is not None and protocol in ("closed", "multi_label"):
        if rank == 0:
            attr = attribute_scores(model, vs.video_ids, attributes)
    if rank != 0:
        return None
    metrics = protocol_metrics(config, vs, attr, world)
    counts = {"evaluated": len(vs.video_ids), "skipped": int(vs.counts.get("skipped", 0)),
              "bad_files": list(vs.counts.get("bad_files", [])), "padded": int(vs.counts.get("padded", 0)),
              "padded_files": list(vs.counts.get("padded_files", [])), "per_metric": metric_counts(metrics),
              "video_scores_from": str(reused.directory) if reused is not None else None}
    if write:
        write_cache(
            cache_dir,
            video_ids=vs.video_ids,
            labels=vs.labels,
            video_scores=vs.scores,
            classes=names,
            split=cache_name,
            config_hash=config.content_hash(),
            score_kind=vs.score_kind,
            attr_scores=attr,
            class_emb=vs.class_emb,
            frame_emb=vs.frame_emb,
            view_scores=vs.view_scores,
            extra={"views": vs.views, "clips": views[0], "crops": views[1], "protocol": protocol,
                   "mode": mode, "view_aggregation": config.eval.view_aggregation, "counts": counts,
                   KEY_FIELD: key},
        )
        if vs_path is not None and vs_path.exists():
            os.unlink(vs_path)
    return metrics, counts


def evaluate_k600_split_lists(
    config: RunConfig,
    model,
    run_dir: Path,
    device: torch.device,
    logger: Optional[RunLogger] = None,
    reuse_from: Sequence[Optional[str | Path]] = (),
) -> Optional[tuple[dict, dict]]:
    """The released Kinetics-600 zero-shot protocol (``eval.k600_split_lists``): one evaluation per split.

    Split i (:func:`bike.protocols.k600_split_configs`) scores the videos of ``k600_split_lists[i]`` against
    the classes of ``k600_split_files[i]`` only (the model's classes are set to them), with the full model or
    the frame-level path (``eval.zero_shot_path``); its scores go to ``cache/<split>_k600_split<i+1>/``
    (labels ``[N_i]`` index that split's classes, scores ``[N_i, K_i]``; its manifest records the split's
    derived config: protocol ``zero_shot_full``, that config's hash) and a finished split's cache is reused
    by a rerun (same video-side key). Metrics (percent): ``zs_k600_split{i}`` (0-based), the split's
    top-1 over its K_i classes (``eval.zero_shot_ties``); ``zs_k600_mean`` / ``zs_k600_std`` and
    ``zs_k600_top5_mean`` / ``zs_k600_top5_std``: mean and population std (ddof 0) over the splits
    (:class:`~bike.engine.caches.SplitResult`). The protocol has no evaluation over all classes, so ``top1``
    and ``top5`` are the means over the splits (``zs_k600_mean``, ``zs_k600_top5_mean``), their counts
    the sums of the splits' counts. Returns (metrics, counts) on rank 0, where ``counts["k600_splits"]``
    lists each split's list, class file, cache, videos, classes, top-1 and top-5.
    """
    from bike.protocols import k600_split_configs

    split = config.eval.split
    result = SplitResult([], [], [], [])
    per_split: list[dict] = []
    evaluated = skipped = padded = 0
    bad_files: list[str] = []
    padded_files: list[str] = []
    for i, cfg in enumerate(k600_split_configs(config)):
        name = k600_split_cache_name(split, i)
        if logger:
            logger.info("K600 zero-shot split %d of %d: %s against the classes of %s (cache/%s)", i + 1,
                        len(config.eval.k600_split_lists or []), getattr(cfg.data, f"{split}_list"), cfg.data.class_file, name)
        out = evaluate_split(cfg, model, run_dir, split, device, logger, reuse_from=reuse_from, cache_name=name, resume=True)
        if out is None:  # not rank 0
            continue
        metrics, counts = out
        result.top1.append(float(metrics["top1"]))
        result.top5.append(float(metrics["top5"]))
        result.videos.append(int(counts["evaluated"]))
        result.classes.append(int(model.num_classes))
        evaluated += int(counts["evaluated"])
        skipped += int(counts["skipped"])
        padded += int(counts.get("padded", 0))
        bad_files += list(counts["bad_files"])
        padded_files += list(counts.get("padded_files", []))
        per_split.append({"list": getattr(cfg.data, f"{split}_list"), "class_file": cfg.data.class_file, "cache": name,
                          "videos": int(counts["evaluated"]), "skipped": int(counts["skipped"]),
                          "classes": int(model.num_classes), "top1": result.top1[-1], "top5": result.top5[-1],
                          "video_scores_from": counts.get("video_scores_from")})
        if logger:
            logger.info("K600 zero-shot split %d: top-1 %.2f, top-5 %.2f over %d videos and %d classes", i + 1,
                        result.top1[-1], result.top5[-1], result.videos[-1], result.classes[-1])
    if _world()[0] != 0:
        return None
    out_metrics: dict[str, Metric | float] = dict(result.metrics("zs_k600"))
    out_metrics["top1"] = Metric(result.top1_mean, evaluated, skipped)
    out_metrics["top5"] = Metric(result.top5_mean, evaluated, skipped)
    reused = [s["video_scores_from"] for s in per_split if s["video_scores_from"]]
    counts = {"evaluated": evaluated, "skipped": skipped, "bad_files": bad_files, "padded": padded,
              "padded_files": padded_files, "per_metric": metric_counts(out_metrics),
              "video_scores_from": reused or None, "k600_splits": per_split}
    return out_metrics, counts
