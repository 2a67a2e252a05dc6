"""Pictures of a finished run, written to ``<run_dir>/figures/`` (``bike.rundir.FIGURES_DIR``).

Each picture is a PNG with a JSON beside it holding the numbers drawn (``<name>.png`` +
``<name>.json``); the harness logs every file of ``figures/`` to MLflow. matplotlib draws on its Agg
canvas (no pyplot, no display). :func:`write_run_figures` is called by ``bike.train`` and
``bike.evaluate`` after the final evaluation of ``eval.split`` (``eval.figures`` sample videos; 0: none):

* ``saliency``: for a fixed sample of the split's videos (evenly spaced over the list), the T frames the
  model sees in a strip and, below, the temporal saliency of Video Concept Spotting
  (``VideoBranch.forward(return_saliency=True)``, ``bike.saliency``) for the true and the predicted
  class (uniform for a mean-pool run); on the embedded world, the true action window shaded
  (``bike.world.windows``; at full scale there is none);
* ``attributes``: the same videos (middle frame), their generated attributes in rank order (the k the
  sentence uses in bold, the video's own class phrase marked) and the top-5 of the fused (else video)
  scores; the JSON also counts, over the whole split, the videos whose own class phrase is among their
  top-5 attributes;
* ``confusion`` and ``per_class``: the confusion matrix and the per-class top-1 of the run's headline
  scores (fused when the run has attribute scores, else video) from its cache (single-label splits);
* ``training``: loss, learning rates and the selection metric per epoch from ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from bike.config import RunConfig
from bike.rundir import FIGURES_DIR, atomic_path, atomic_write_json, json_default

#: Pictures a run writes (names of ``<run_dir>/figures/<name>.{png,json}``).
FIGURE_NAMES = ("saliency", "attributes", "confusion", "per_class", "training")
#: Attributes that count as "carrying the class phrase" (the Fig. A.2 summary).
OWN_PHRASE_TOP = 5


def figures_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/figures``."""
    return Path(run_dir) / FIGURES_DIR


def sample_rows(n_videos: int, n: int) -> list[int]:
    """``n`` row indices evenly spaced over ``n_videos`` (all when fewer): a fixed sample of the split."""
    if n <= 0 or n_videos <= 0:
        return []
    if n >= n_videos:
        return list(range(n_videos))
    return sorted({int(round(x)) for x in np.linspace(0, n_videos - 1, n)})


def headline_scores(cache, config: RunConfig) -> tuple[np.ndarray, str]:
    """(scores ``[N, K]``, ``"fused"`` or ``"video"``): the scores the run's top-1 is computed from."""
    from bike.fusion import fuse

    if cache.attr_scores is not None:
        fused = fuse(np.asarray(cache.video_scores), np.asarray(cache.attr_scores), config.fusion_lambda,
                     config.fusion.transform, kind_v=cache.score_kind, dtype=np.float64)
        return np.asarray(fused), "fused"
    return np.asarray(cache.video_scores, dtype=np.float64), "video"


# ------------------------------------------------------------------------------ writing
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, data: dict, directory: Path, name: str) -> Path:
    """``<directory>/<name>.png`` and ``<name>.json`` (the numbers drawn), both written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / f"{name}.png") as tmp:
        fig.savefig(tmp, format="png")
    atomic_write_json(directory / f"{name}.json", json.loads(json.dumps(data, default=json_default)))
    return directory / f"{name}.png"


# ------------------------------------------------------------------------------ saliency
def _true_class(label: Any, scores: np.ndarray) -> int:
    lab = np.asarray(label)
    if lab.ndim == 0:
        return int(lab)
    pos = np.flatnonzero(lab > 0)
    return int(pos[np.argmax(scores[pos])]) if pos.size else int(np.argmax(scores))


def compute_saliency(model, config: RunConfig, records: Sequence, device: Any = "cpu") -> list[dict]:
    """Per record: the frames the model sees, their indices in the video, the video-branch logits
    ``[K]`` and the saliency ``[K, T]`` (``VideoBranch.forward(..., return_saliency=True)``)."""
    import torch

    from bike.data.decode import sample_and_decode
    from bike.data.sampling import tsn_test_indices
    from bike.engine.datasets import build_dataset
    from bike.engine.precision import autocast

    model.eval()
    dataset = build_dataset(config, records, train=False, num_classes=model.num_classes, views=(1, 1),
                            mean=model.backbone.image_mean, std=model.backbone.image_std)
    with torch.no_grad():  # a fine-tuned category encoder would otherwise build a graph over every class prompt
        text = model.class_text()
    mask = model.word_mask() if config.model.needs_word_mask else None
    t = config.model.frames
    out = []
    for i, record in enumerate(records):
        item = dataset[i]
        if not hasattr(item, "clip"):  # a bad video: left out of the pictures
            continue
        raw, indices, _ = sample_and_decode(record, lambda n: tsn_test_indices(n, t, config.eval.single_view_frame),
                                            config.data.decoder, config.data.frame_template)
        with torch.no_grad():
            with autocast(config.train.precision, torch.device(device)):
                frames = model.frame_features(item.clip.unsqueeze(0).to(device))
            logits, sal = model.video_branch(frames.float(), text, mask, return_saliency=True)
        out.append({"record": record, "frames": raw, "indices": np.asarray(indices),
                    "logits": logits[0].float().cpu().numpy(), "saliency": sal[0].float().cpu().numpy()})
    return out


def _windows(config: RunConfig, records: Sequence) -> dict[str, dict]:
    from bike.world.windows import action_windows, world_root_of

    root = world_root_of(config.data.root) if config.data.root else None
    return action_windows(root, [r.path for r in records]) if root is not None else {}


def _strip(frames: np.ndarray) -> np.ndarray:
    return np.concatenate(list(frames), axis=1)


def saliency_figure(config: RunConfig, cache, rows: Sequence[int], computed: list[dict], directory: Path) -> Optional[Path]:
    """``saliency.png`` / ``.json`` (see the module docstring)."""
    if not computed:
        return None
    windows = _windows(config, [c["record"] for c in computed])
    index = {v: i for i, v in enumerate(cache.video_ids)}
    classes = list(cache.classes)
    videos = []
    for c in computed:
        rec = c["record"]
        row = index[rec.video_id]
        true = _true_class(cache.labels[row], c["logits"])
        pred = int(np.argmax(c["logits"]))
        idx = c["indices"]
        win = windows.get(str(rec.path))
        inside = None
        if win is not None:
            inside = [bool(any(s <= f < e for s, e in win["windows"])) for f in idx]
        videos.append({"video_id": rec.video_id, "label": true, "label_name": classes[true], "pred": pred,
                       "pred_name": classes[pred], "frame_indices": idx.tolist(),
                       "saliency_true": c["saliency"][true].tolist(), "saliency_pred": c["saliency"][pred].tolist(),
                       "window": None if win is None else win["windows"], "video_frames": None if win is None else win["frames"],
                       "in_window": inside})
    data = {"split": cache.split, "interaction": config.model.interaction, "vcs_tau": config.model.vcs_tau,
            "frames": config.model.frames, "videos": videos,
            "note": "saliency rows sum to 1 over the frames; window: the true action's frames [start, end) of the video "
                    "(embedded world only)"}
    n, t = len(videos), config.model.frames
    fig = _figure(max(3.0, 0.9 * t) + 1.5, 2.4 * n + 0.6)
    grid = fig.add_gridspec(2 * n, 1, height_ratios=[1.0, 1.1] * n, hspace=0.4)
    for j, (c, v) in enumerate(zip(computed, videos)):
        top = ax = fig.add_subplot(grid[2 * j])
        ax.imshow(_strip(c["frames"]), extent=(-0.5, t - 0.5, 0.0, 1.0), aspect="auto")  # frame i above x = i
        ax.set_axis_off()
        ok = "✓" if v["pred"] == v["label"] else "✗"
        ax.set_title(f"{v['video_id']}  true: {v['label_name']}  predicted: {v['pred_name']} {ok}", fontsize=8, loc="left")
        ax = fig.add_subplot(grid[2 * j + 1], sharex=top)
        x = np.arange(t)
        if v["in_window"] is not None and any(v["in_window"]):
            pos = [i for i, f in enumerate(v["in_window"]) if f]
            ax.axvspan(pos[0] - 0.5, pos[-1] + 0.5, color="0.85", label="true action window")
        ax.plot(x, v["saliency_true"], "o-", color="C2", label=f"true: {v['label_name']}")
        if v["pred"] != v["label"]:
            ax.plot(x, v["saliency_pred"], "s--", color="C3", label=f"predicted: {v['pred_name']}")
        ax.set_xlim(-0.5, t - 0.5)
        ax.set_xticks(x, [str(f) for f in v["frame_indices"]], fontsize=7)
        ax.set_ylabel("saliency", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(f"Temporal saliency of VCS ({config.model.interaction}), {cache.split} split; x: frame of the video",
                 fontsize=9)
    return save_figure(fig, data, directory, "saliency")


# ------------------------------------------------------------------------------ attributes
def own_phrase_count(cache, top: int = OWN_PHRASE_TOP) -> tuple[int, int]:
    """(videos whose own class name is among their top-``top`` attributes, videos with attributes)."""
    if cache.attributes is None or cache.multi_label:
        return 0, 0
    hits = sum(1 for phrases, y in zip(cache.attributes, cache.labels) if cache.classes[int(y)] in phrases[:top])
    return hits, len(cache.attributes)


def attributes_figure(config: RunConfig, cache, rows: Sequence[int], frames: dict[str, np.ndarray], directory: Path) -> Optional[Path]:
    """``attributes.png`` / ``.json`` (see the module docstring)."""
    if cache.attributes is None or not rows:
        return None
    scores, kind = headline_scores(cache, config)
    classes = list(cache.classes)
    k = config.attributes.num_attributes
    videos = []
    for r in rows:
        phrases = list(cache.attributes[r])
        true = _true_class(cache.labels[r], scores[r])
        top = np.argsort(-scores[r], kind="stable")[:5]
        videos.append({"video_id": cache.video_ids[r], "label": true, "label_name": classes[true],
                       "attributes": phrases, "num_attributes": k,
                       "own_class_rank": phrases.index(classes[true]) + 1 if classes[true] in phrases else None,
                       "top5": [{"class": int(c), "name": classes[c], "score": float(scores[r, c])} for c in top]})
    hits, total = own_phrase_count(cache)
    data = {"split": cache.split, "scores": kind, "fusion_lambda": config.fusion_lambda if kind == "fused" else None,
            "videos": videos, "own_class_in_top5": {"videos": hits, "of": total}}
    n = len(videos)
    fig = _figure(11.0, 1.9 * n + 0.8)
    grid = fig.add_gridspec(n, 3, width_ratios=[1.0, 2.2, 2.2], wspace=0.35, hspace=0.5)
    for j, v in enumerate(videos):
        ax = fig.add_subplot(grid[j, 0])
        f = frames.get(v["video_id"])
        if f is not None:
            ax.imshow(f[len(f) // 2])
        ax.set_axis_off()
        ax.set_title(v["label_name"], fontsize=7)
        ax = fig.add_subplot(grid[j, 1])
        ax.set_axis_off()
        for i, p in enumerate(v["attributes"][: max(k, OWN_PHRASE_TOP) + 2]):
            own = p == v["label_name"]
            ax.text(0.0, 1.0 - 0.13 * i, f"{i + 1}. {p}" + ("  ← its class" if own else ""), fontsize=7,
                    fontweight="bold" if i < k else "normal", color="C2" if own else ("k" if i < k else "0.45"),
                    va="top", transform=ax.transAxes)
        if j == 0:
            ax.set_title(f"generated attributes (top {k} in bold: the sentence)", fontsize=8)
        ax = fig.add_subplot(grid[j, 2])
        names = [t["name"] for t in v["top5"]][::-1]
        vals = [t["score"] for t in v["top5"]][::-1]
        ax.barh(range(len(vals)), vals, color=["C2" if t["class"] == v["label"] else "C0" for t in v["top5"]][::-1])
        ax.set_yticks(range(len(vals)), names, fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
        if j == 0:
            ax.set_title(f"top-5 ({kind} scores)", fontsize=8)
    fig.suptitle(f"Generated attributes and predictions, {cache.split} split: {hits} of {total} videos carry their own "
                 f"class phrase among their top-{OWN_PHRASE_TOP} attributes", fontsize=9)
    return save_figure(fig, data, directory, "attributes")


# ------------------------------------------------------------------------------ confusion, per class
def confusion_figures(config: RunConfig, cache, directory: Path) -> list[Path]:
    """``confusion`` and ``per_class`` (single-label splits)."""
    if cache.multi_label:
        return []
    scores, kind = headline_scores(cache, config)
    labels = np.asarray(cache.labels, dtype=np.int64)
    keep = labels >= 0
    labels, pred = labels[keep], np.argmax(scores[keep], axis=1)
    k = cache.num_classes
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (labels, pred), 1)
    counts = matrix.sum(axis=1)
    acc = np.where(counts > 0, np.diag(matrix) / np.maximum(counts, 1), np.nan)
    classes = list(cache.classes)
    out = []
    fig = _figure(min(14.0, 3.0 + 0.12 * k), min(13.0, 2.5 + 0.12 * k))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(k), classes, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({kind} scores, {cache.split}, N = {int(matrix.sum())}, "
                 f"top-1 {100 * np.trace(matrix) / max(1, matrix.sum()):.1f} %)", fontsize=9)
    fig.tight_layout()
    out.append(save_figure(fig, {"split": cache.split, "scores": kind, "classes": classes, "matrix": matrix.tolist()},
                           directory, "confusion"))
    order = np.argsort(np.nan_to_num(acc, nan=-1.0), kind="stable")
    fig = _figure(max(6.0, 0.12 * k + 2.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(k), 100 * np.nan_to_num(acc[order]), color="C0")
    ax.set_xticks(range(k), [classes[i] for i in order], rotation=90, fontsize=5 if k > 40 else 7)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-class top-1 ({kind} scores, {cache.split}), worst first", fontsize=9)
    fig.tight_layout()
    out.append(save_figure(fig, {"split": cache.split, "scores": kind, "classes": classes,
                                 "accuracy": [None if np.isnan(a) else float(a) for a in acc],
                                 "videos": counts.tolist()}, directory, "per_class"))
    return out


# ------------------------------------------------------------------------------ training curves
def training_figure(run_dir: Path, directory: Path) -> Optional[Path]:
    """``training``: loss and learning rates per step, validation metrics per epoch (``metrics.jsonl``)."""
    from bike.engine.logging import read_metrics

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        return None
    val = [r for r in records if r.get("kind") == "val"]
    lr_keys = sorted({k for r in train for k in r if k.startswith("lr_")})
    data = {"train": {"step": [r["step"] for r in train], "epoch": [r.get("epoch") for r in train],
                      "loss": [r.get("loss") for r in train], **{k: [r.get(k) for r in train] for k in lr_keys}},
            "val": {}}
    val_keys = sorted({k for r in val for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k not in ("step", "time", "epoch")})
    if val:
        data["val"] = {"epoch": [r.get("epoch") for r in val], **{k: [r.get(k) for r in val] for k in val_keys}}
    panels = 2 + bool(val)
    fig = _figure(4.2 * panels, 3.4)
    ax = fig.add_subplot(1, panels, 1)
    ax.plot(data["train"]["step"], data["train"]["loss"], color="C0")
    ax.set_xlabel("step")
    ax.set_title("training loss", fontsize=9)
    ax = fig.add_subplot(1, panels, 2)
    for k in lr_keys:
        ax.plot(data["train"]["step"], data["train"][k], label=k[3:])
    ax.set_xlabel("step")
    if any(x is not None and x > 0 for k in lr_keys for x in data["train"][k]):
        ax.set_yscale("log")
    ax.set_title("learning rates", fontsize=9)
    if lr_keys:
        ax.legend(fontsize=7)
    if val:
        ax = fig.add_subplot(1, panels, 3)
        for k in [k for k in val_keys if k.endswith(("top1", "mAP")) and k != "best"]:
            ax.plot(data["val"]["epoch"], data["val"][k], "o-", label=k)
        ax.set_xlabel("epoch")
        ax.set_title(f"validation ({val[0].get('split', '')})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, data, directory, "training")


# ------------------------------------------------------------------------------ all of a run
def write_run_figures(config: RunConfig, run_dir: str | Path, model=None, device: Any = "cpu", logger=None) -> list[Path]:
    """Every picture of the run (see the module docstring) under ``<run_dir>/figures``; returns the PNGs.

    ``model``: the run's model after its final evaluation (the saliency needs it; without it the
    saliency is left out). A picture that cannot be drawn is logged as a warning, never raised: the
    run's result does not depend on its pictures."""
    from bike.engine.caches import load_score_cache
    from bike.engine.datasets import split_records

    n = config.eval.figures
    if n <= 0:
        return []
    run_dir = Path(run_dir)
    directory = figures_dir(run_dir)
    written: list[Path] = []

    def attempt(name: str, fn, *args):
        try:
            out = fn(*args)
        except Exception as exc:  # noqa: BLE001 - pictures never fail a run
            if logger is not None:
                logger.warning("figure %s not drawn: %s: %s", name, type(exc).__name__, exc)
            return None
        if isinstance(out, list):
            written.extend(out)
        elif out is not None:
            written.append(out)
        return out

    attempt("training", training_figure, run_dir, directory)
    try:
        cache = load_score_cache(run_dir, config.eval.split)
    except Exception as exc:  # noqa: BLE001
        if logger is not None:
            logger.warning("figures from the score cache not drawn: %s", exc)
        return written
    rows = sample_rows(cache.num_videos, n)
    attempt("confusion", confusion_figures, config, cache, directory)
    computed: list[dict] = []
    if model is not None and rows:
        records, _ = split_records(config, config.eval.split)
        by_id = {r.video_id: r for r in records}
        sample = [by_id[cache.video_ids[r]] for r in rows if cache.video_ids[r] in by_id]
        try:
            computed = compute_saliency(model, config, sample, device)
        except Exception as exc:  # noqa: BLE001 - pictures never fail a run
            if logger is not None:
                logger.warning("figure saliency not drawn: %s: %s", type(exc).__name__, exc)
        attempt("saliency", saliency_figure, config, cache, rows, computed, directory)
    frames = {c["record"].video_id: c["frames"] for c in computed}
    attempt("attributes", attributes_figure, config, cache, rows, frames, directory)
    if logger is not None and written:
        logger.info("figures: %s in %s", ", ".join(p.stem for p in written), directory)
    return written
