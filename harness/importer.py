"""``bikebench import``: the authors' released artefacts as bikebench run directories.

* :func:`import_official` (``bikebench import official CKPT --out DIR``): a released checkpoint
  (``bike.official``) becomes a run directory — ``config.yaml`` (the resolved RunConfig of the inferred
  model: backbone ``*-quickgelu``, ``pretrained: null``, temporal module, VCS), ``checkpoints/best.pt``
  (the weights in the ``BikeModel`` layout), ``result.json`` (``imported: true``, the source file and its
  SHA-256, the inferred architecture). Any spec can name it as ``init_from``; ``bike.evaluate`` evaluates it.
* :func:`import_official_scores` (``bikebench import official-scores DIR --out DIR``): the four score
  files of ``video_sentence_fusion.zip`` (``k400_{video,sentence}_{sims,labels}.pt``; a folder or the zip)
  become a run's score cache ``cache/val/`` (``bike.engine.caches.write_cache``: video and attribute
  scores, labels, ``score_kind: probabilities``, the class list) with its fused metrics at the released
  λ = 0.7 in ``result.json``. ``bikebench tune`` takes that run directory as ``source_run``.
* :func:`zoo_rows`: every row of ``experiments/zoo.yaml`` with its file, whether it is there, and the
  README's download URL (the hook for a generic ``bikebench table zoo``).

Shapes: N videos, K classes.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from bike.config import ConfigError, RunConfig
from bike.rundir import CONFIG_FILE, RESULT_FILE, atomic_write_json, atomic_write_text, checkpoint_dir

#: The score files of the README's ViT-B/32 V+A row (``video_sentence_fusion.zip``), by role.
SCORE_FILES = {
    "video_sims": "k400_video_sims.pt",
    "video_labels": "k400_video_labels.pt",
    "sentence_sims": "k400_sentence_sims.pt",
    "sentence_labels": "k400_sentence_labels.pt",
}
#: λ of the released fusion (``utils.utils.fusion_acc``: 0.7 video + 0.3 sentence).
RELEASED_LAMBDA = 0.7
#: |row sum − 1| tolerated for a row of class probabilities (the files may be half precision).
PROBABILITY_TOL = 1e-2
#: Where the README's zoo files come from.
RELEASE_URL = "https://github.com/whwu95/BIKE/releases/download/v1.0"
ONEDRIVE_URL = ("https://unisyd-my.sharepoint.com/:f:/g/personal/wenhao_wu_sydney_edu_au/"
                "EieZBg9a40VAhSIVl6ovAIIBaCuzYamkfE1dMn6MxjjwGg?e=JcqYk4")


class ImportError_(ConfigError):
    """Files that cannot be imported; the message names the file, the field and what was expected."""


# ===================================================================================== checkpoints
def _write_run(out: Path, config: RunConfig, result: dict[str, Any], overwrite: bool) -> None:
    if (out / RESULT_FILE).exists() and not overwrite:
        raise ImportError_(f"{out / RESULT_FILE}: already exists; pass --force to replace the imported run")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, config.to_yaml())
    atomic_write_json(out / RESULT_FILE, result)


def import_official(
    checkpoint: str | Path,
    out: str | Path,
    *,
    interaction: str = "vcs",
    frames: int = 8,
    dataset: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    """Write a released checkpoint as a bikebench run directory (see the module docstring); returns ``out``.

    Args:
        checkpoint: the released ``.pt`` file. interaction: ``vcs`` (every released model) or ``mean``.
        frames: T the model was trained with (not stored in the file; the zoo's "8x224" says 8).
        dataset: ``RunConfig.data`` fields for the run's config (default: K400 under ``data/k400``).
        overwrite: replace an earlier import in ``out``.
    """
    from bike.official import OfficialCheckpointError, file_sha256, load_official_checkpoint
    from bike.rundir import BEST, atomic_write_torch

    checkpoint, out = Path(checkpoint), Path(out)
    try:
        model = load_official_checkpoint(checkpoint, interaction=interaction)
    except (FileNotFoundError, OfficialCheckpointError) as exc:
        raise ImportError_(str(exc)) from None
    cfg = model.model_config
    attrs: dict[str, Any] = {"enabled": False}
    if cfg.head == "attributes":
        attrs = {"enabled": True, "train": True, "text_encoder": cfg.backbone, "text_encoder_pretrained": None}
    config = RunConfig.model_validate({
        "name": f"import-{checkpoint.stem}",
        "stage": "eval",
        "data": dataset or {"dataset": "k400", "root": "data/k400/videos", "val_list": "data/k400/lists/val.txt",
                            "class_file": "data/k400/lists/kinetics_400_labels.csv"},
        "model": {**cfg.run_model_fields(), "frames": frames},
        "attributes": attrs,
    })
    sha = file_sha256(checkpoint)
    if (out / RESULT_FILE).exists() and not overwrite:
        raise ImportError_(f"{out / RESULT_FILE}: already exists; pass --force to replace the imported run")
    atomic_write_torch(checkpoint_dir(out) / BEST, {"model": model.bikebench_state(), "imported_from": str(checkpoint.resolve()),
                                                     "sha256": sha, "epoch": cfg.epoch})
    result = {
        "status": "done",
        "imported": True,
        "kind": "official_checkpoint",
        "run_id": config.content_hash(),
        "stage": "eval",
        "source": {"path": str(checkpoint.resolve()), "sha256": sha, "epoch": cfg.epoch},
        "model_config": cfg.as_dict(),
        "metrics": {},
    }
    _write_run(out, config, result, overwrite=True)
    return out


# ===================================================================================== score files
@dataclass
class ReleasedScores:
    """The four released score files, checked. video, sentence: ``[N, K]`` float64 probabilities; labels ``[N]``."""

    video: np.ndarray
    sentence: np.ndarray
    labels: np.ndarray
    sources: dict[str, dict[str, str]]


def _score_members(source: Path) -> dict[str, tuple[str, bytes]]:
    """role -> (display name, bytes) from a folder or a zip (members found by file name, in any folder)."""
    out: dict[str, tuple[str, bytes]] = {}
    if source.is_dir():
        for role, name in SCORE_FILES.items():
            path = source / name
            if not path.is_file():
                hits = sorted(source.rglob(name))
                if not hits:
                    raise ImportError_(f"{path}: released score file not found (expected {sorted(SCORE_FILES.values())} in {source})")
                path = hits[0]
            out[role] = (str(path), path.read_bytes())
    elif source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            names = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
            for role, name in SCORE_FILES.items():
                if name not in names:
                    raise ImportError_(f"{source}: no member {name!r} (expected {sorted(SCORE_FILES.values())})")
                out[role] = (f"{source}:{names[name]}", zf.read(names[name]))
    else:
        raise ImportError_(f"{source}: not a folder or a zip of the released score files ({sorted(SCORE_FILES.values())})")
    return out


def _load_tensor(name: str, data: bytes) -> np.ndarray:
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ImportError_(f"{name}: not a readable torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, torch.Tensor):
        raise ImportError_(f"{name}: expected a tensor, got {type(obj).__name__}")
    return obj.detach().cpu().numpy() if obj.dtype != torch.bfloat16 else obj.float().numpy()


def read_released_scores(source: str | Path, num_classes: Optional[int] = None) -> ReleasedScores:
    """Read and check the four files: sims ``[N, K]`` rows of class probabilities (finite, ≥ 0, summing
    to 1 within :data:`PROBABILITY_TOL`), labels ``[N]`` integers in ``[0, K)``, the same N everywhere
    and the two label files equal row by row (the files are joined by row order: the labels are the
    only evidence that the rows are the same videos). Errors name the file and what was expected."""
    import hashlib

    source = Path(source)
    members = _score_members(source)
    arrays = {role: _load_tensor(name, data) for role, (name, data) in members.items()}
    names = {role: name for role, (name, _) in members.items()}
    for role in ("video_sims", "sentence_sims"):
        a = arrays[role]
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
            raise ImportError_(f"{names[role]}: shape {a.shape} dtype {a.dtype}; expected a float [N, K] tensor of class probabilities")
        if num_classes is not None and a.shape[1] != num_classes:
            raise ImportError_(f"{names[role]}: {a.shape[1]} columns; expected K = {num_classes} classes (the class list)")
        a64 = a.astype(np.float64)
        if not np.isfinite(a64).all() or (a64 < 0).any() or np.abs(a64.sum(axis=1) - 1.0).max() > PROBABILITY_TOL:
            raise ImportError_(f"{names[role]}: rows are not class probabilities (finite, >= 0, summing to 1); "
                               "expected the released softmax scores")
        arrays[role] = a64
    for role in ("video_labels", "sentence_labels"):
        y = arrays[role]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ImportError_(f"{names[role]}: shape {y.shape} dtype {y.dtype}; expected an integer [N] tensor of labels")
    v, s = arrays["video_sims"], arrays["sentence_sims"]
    if v.shape != s.shape:
        raise ImportError_(f"{names['sentence_sims']}: shape {s.shape} differs from {names['video_sims']} {v.shape}; "
                           "expected the same videos and classes")
    for role in ("video_labels", "sentence_labels"):
        if len(arrays[role]) != v.shape[0]:
            raise ImportError_(f"{names[role]}: {len(arrays[role])} labels for {v.shape[0]} score rows; expected one label per row")
    yv, ys = arrays["video_labels"].astype(np.int64), arrays["sentence_labels"].astype(np.int64)
    differ = np.flatnonzero(yv != ys)
    if differ.size:
        raise ImportError_(
            f"{names['sentence_labels']}: {differ.size} of {len(yv)} labels differ from {names['video_labels']} "
            f"(first at row {int(differ[0])}: {int(ys[differ[0]])} vs {int(yv[differ[0]])}); the rows are not the same videos")
    if (yv < 0).any() or (yv >= v.shape[1]).any():
        raise ImportError_(f"{names['video_labels']}: labels outside [0, {v.shape[1]})")
    sources = {role: {"file": names[role], "sha256": hashlib.sha256(data).hexdigest()} for role, (_, data) in members.items()}
    return ReleasedScores(video=v, sentence=s, labels=yv, sources=sources)


def released_fused_top1(scores: ReleasedScores, lam: float = RELEASED_LAMBDA) -> float:
    """Top-1 (percent) of ``λ·video + (1 − λ)·sentence`` on the released probabilities (``bike.fusion``)."""
    from bike.fusion import fuse
    from bike.metrics import topk_accuracy

    fused = fuse(scores.video, scores.sentence, lam, "softmax", kind_v="probabilities", kind_a="probabilities", dtype=np.float64)
    return float(topk_accuracy(fused, scores.labels, ks=(1,))["top1"])


def import_official_scores(
    source: str | Path,
    out: str | Path,
    *,
    class_names: Optional[Sequence[str]] = None,
    class_file: Optional[str | Path] = None,
    overwrite: bool = False,
) -> Path:
    """Write the released score files as a run's score cache (see the module docstring); returns ``out``.

    Args:
        source: the folder holding the four files, or ``video_sentence_fusion.zip``.
        out: the run directory to write (``config.yaml``, ``cache/val/``, ``result.json``).
        class_names / class_file: the K class names in label order (CSV ``id,name``); default the
            Kinetics-400 list shipped with bikebench (``bike/lexicons/k400.txt``, the order of the
            authors' ``kinetics_400_labels.csv``).
    """
    from bike.engine.caches import split_cache_dir, write_cache
    from bike.fusion import fuse
    from bike.metrics import mean_class_accuracy, topk_accuracy

    out = Path(out)
    if class_names is None:
        if class_file is not None:
            from bike.data.lists import read_class_csv

            class_names = read_class_csv(class_file)
        else:
            from bike.attributes import load_lexicon

            class_names = load_lexicon("k400")
    classes = list(class_names)
    scores = read_released_scores(source, num_classes=len(classes))
    if (out / RESULT_FILE).exists() and not overwrite:
        raise ImportError_(f"{out / RESULT_FILE}: already exists; pass --force to replace the imported run")
    config = RunConfig.model_validate({
        "name": "import-video_sentence_fusion",
        "stage": "eval",
        "data": {"dataset": "k400", "class_file": str(class_file) if class_file else ""},
        "model": {"backbone": "ViT-B-32-quickgelu", "pretrained": None, "frames": 8, "resolution": 224},
        "attributes": {"enabled": True, "train": True, "text_encoder": "ViT-B-32-quickgelu", "text_encoder_pretrained": None},
        "fusion": {"lam": RELEASED_LAMBDA, "transform": "softmax"},
        "eval": {"split": "val", "clips": 1, "crops": 1},
    })
    n = len(scores.labels)
    ids = [f"row{i:06d}" for i in range(n)]
    extra = {"imported": True, "source": "video_sentence_fusion", "files": scores.sources, "attr_score_kind": "probabilities",
             "views": 1, "row_ids": "row order of the released files (they carry no video ids)"}
    write_cache(split_cache_dir(out, "val"), video_ids=ids, labels=scores.labels, video_scores=scores.video.astype(np.float32),
                attr_scores=scores.sentence.astype(np.float32), classes=classes, split="val",
                config_hash=config.content_hash(), score_kind="probabilities", extra=extra)
    metrics: dict[str, Any] = {}
    fused = fuse(scores.video, scores.sentence, RELEASED_LAMBDA, "softmax", kind_v="probabilities", kind_a="probabilities",
                 dtype=np.float64)
    for prefix, s in (("video_", scores.video), ("attr_", scores.sentence), ("fused_", fused)):
        acc = topk_accuracy(s, scores.labels, ks=(1, 5))
        metrics[f"{prefix}top1"], metrics[f"{prefix}top5"] = float(acc["top1"]), float(acc["top5"])
        metrics[f"{prefix}mean_class"] = float(mean_class_accuracy(s, scores.labels))
    metrics.update(top1=metrics["fused_top1"], top5=metrics["fused_top5"], fusion_lambda=RELEASED_LAMBDA)
    result = {
        "status": "done", "imported": True, "kind": "official_scores", "run_id": config.content_hash(), "stage": "eval",
        "split": "val", "views": [1, 1], "source": {"path": str(Path(source).resolve()), "files": scores.sources},
        "metrics": metrics, "counts": {"evaluated": n, "skipped": 0, "bad_files": []},
    }
    _write_run(out, config, result, overwrite=True)
    return out


# ============================================================================================ zoo
@dataclass(frozen=True)
class ZooRow:
    """One row of the README zoo as ``experiments/zoo.yaml`` names it."""

    variant: str
    cells: tuple[tuple[str, str, str], ...]
    file: str
    exists: bool
    url: str
    kind: str  # "checkpoint" or "scores"


def zoo_rows(spec: Any, scale: str = "full") -> list[ZooRow]:
    """Every variant of a zoo spec (``harness.spec.Spec``) with its file (``init_from``: a released checkpoint,
    or the released score files' zip) and the README URL given in its ``description``.

    The hook for a generic ``bikebench table zoo``: a missing file is a row with ``exists=False``, never an error.
    """
    import re

    rows = []
    for name, v in spec.variants.items():
        text = v.description
        url = v.source_url or next(iter(re.findall(r"https?://\S+", text)), "")
        if isinstance(v.init_from, str):
            file = v.init_from
        else:
            found = re.findall(r"file:\s*(\S+)", text)
            file = found[0] if found else ""
        kind = "checkpoint" if file.endswith(".pt") else "scores"
        rows.append(ZooRow(name, tuple((c.table, c.row, c.column) for c in v.cells), file,
                           bool(file) and Path(file).expanduser().exists(), url.rstrip(").,"), kind))
    return rows
