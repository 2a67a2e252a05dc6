"""What a pretrained tiny CLIP can do on the world: zero-shot and linear-probe accuracy.

Frames are taken as BIKE's single-view test takes them (the first frame of each of T equal segments)
from the mp4 files on disk, resized to the model's input size and normalised with CLIP's statistics.

* frame-level zero-shot (the official zero-shot path): per-frame softmax over the class prompts at
  logit scale 100, averaged over the frames;
* video-level zero-shot: cosine between the mean of the L2-normalised frame embeddings and the prompts;
* linear probe: a softmax classifier on the mean frame embedding, trained on one list, tested on another;
* the lexicon as the attribute generator ranks it (general val, the world lexicon): how often the video's
  own class phrase comes first and within the top 5, and which share of the top-5 places go to phrases
  no frame shows (the lexicon's unrelated phrases) and to still objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bike.attributes import rank_lexicon, video_embedding
from bike.config import DEFAULT_NUM_ATTRIBUTES
from bike.world.config import STILL_WORDS, UNRELATED_PHRASES
from bike.world.pretrain import image_stats, preprocess

#: Logit scale of the official zero-shot path (temperature 0.01).
ZERO_SHOT_SCALE = 100.0


def segment_first_indices(num_frames: int, t: int) -> np.ndarray:
    """First frame of each of ``t`` equal segments: ``floor(i * n / t)``, i = 0..t-1."""
    return (np.arange(t) * num_frames // t).astype(np.int64)


def read_frames(path: str | Path, t: int) -> np.ndarray:
    """uint8 ``[t, H, W, 3]``: frames ``segment_first_indices`` of the video at ``path`` (decord)."""
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    frames = reader.get_batch(segment_first_indices(len(reader), t).tolist()).asnumpy()
    del reader
    return frames


def read_video_list(list_file: str | Path, root: str | Path) -> tuple[list[Path], np.ndarray]:
    """``<relative_path> <label>`` lines -> (absolute paths, labels ``[N]``)."""
    paths, labels = [], []
    for line in Path(list_file).read_text().splitlines():
        if line.strip():
            rel, label = line.split()
            paths.append(Path(root) / rel)
            labels.append(int(label))
    return paths, np.asarray(labels, np.int64)


@torch.no_grad()
def encode_videos(model: nn.Module, videos: Sequence[np.ndarray], batch: int = 64) -> torch.Tensor:
    """L2-normalised frame embeddings ``[N, T, D]`` of N videos (each uint8 ``[T, H, W, 3]``; the centred
    square of a landscape frame, where the world's actions are)."""
    mean, std, size = image_stats(model)
    frames = torch.from_numpy(np.stack(videos))  # [N, T, H, W, 3]
    h, w = frames.shape[2:4]
    if w > h:
        frames = frames[:, :, :, (w - h) // 2:(w - h) // 2 + h]
    n, t = frames.shape[:2]
    flat = frames.reshape(n * t, *frames.shape[2:])
    out = [F.normalize(model.encode_image(preprocess(flat[i:i + batch], mean, std, size)), dim=-1)
           for i in range(0, len(flat), batch)]
    return torch.cat(out).reshape(n, t, -1)


@torch.no_grad()
def encode_prompts(model: nn.Module, model_name: str, names: Sequence[str], template: str) -> torch.Tensor:
    """L2-normalised text embeddings ``[K, D]`` of ``template.format(name)``."""
    import open_clip

    tokens = open_clip.get_tokenizer(model_name)([template.format(n) for n in names])
    return F.normalize(model.encode_text(tokens), dim=-1)


def zero_shot_accuracy(frame_emb: torch.Tensor, class_emb: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Top-1 of the two zero-shot paths. frame_emb ``[N, T, D]``, class_emb ``[K, D]`` (normalised)."""
    y = torch.as_tensor(labels)
    frame_probs = (ZERO_SHOT_SCALE * frame_emb @ class_emb.T).softmax(-1).mean(1)  # [N, K]
    video = F.normalize(frame_emb.mean(1), dim=-1) @ class_emb.T
    return {
        "frame": float((frame_probs.argmax(-1) == y).float().mean()),
        "video": float((video.argmax(-1) == y).float().mean()),
    }


#: Places of the generator's ranking that :func:`lexicon_ranking` reads: the attributes a run uses (k).
RANKING_TOP = DEFAULT_NUM_ATTRIBUTES


def lexicon_ranking(
    frame_emb: torch.Tensor, labels: np.ndarray, class_names: Sequence[str], phrases: Sequence[str],
    phrase_emb: torch.Tensor, top: int = RANKING_TOP,
) -> dict[str, float]:
    """How a CLIP as the attribute generator ranks a lexicon for videos (``bike.attributes``' ranking).

    Args:
        frame_emb: ``[N, T, D]`` frame embeddings; labels: ``[N]`` indices into ``class_names``.
        phrases: the lexicon, ``phrase_emb`` ``[P, D]`` their embeddings.

    Returns fractions: ``own_first`` (the video's class phrase ranked first), ``own_in_top`` (within the
    top ``top``), ``unrelated_share`` / ``still_share`` (of the N x top places: phrases no frame shows,
    still objects), and ``top``.
    """
    idx, _ = rank_lexicon(video_embedding(frame_emb), phrase_emb, top)
    ranked = [[phrases[i] for i in row] for row in idx.tolist()]
    own = [class_names[int(y)] for y in labels]
    unrelated, still = set(UNRELATED_PHRASES), STILL_WORDS[0]
    places = max(len(ranked) * top, 1)
    return {
        "own_first": float(np.mean([r[0] == o for r, o in zip(ranked, own)])),
        "own_in_top": float(np.mean([o in r for r, o in zip(ranked, own)])),
        "unrelated_share": sum(p in unrelated for r in ranked for p in r) / places,
        "still_share": sum(p.endswith(still) for r in ranked for p in r) / places,
        "top": top,
    }


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    num_classes: int,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Top-1 of a softmax classifier (full-batch AdamW) on features ``[N, D]``."""
    torch.manual_seed(seed)
    head = nn.Linear(train_x.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    ytr = torch.as_tensor(train_y)
    xs = train_x * 10.0  # normalised features: scale so a linear head reaches confident logits
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(head(xs), ytr)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = head(test_x * 10.0).argmax(-1)
    return float((pred == torch.as_tensor(test_y)).float().mean())


def _encode_list(model: nn.Module, list_file: Path, root: Path, frames: int) -> tuple[torch.Tensor, np.ndarray]:
    paths, labels = read_video_list(list_file, root)
    return encode_videos(model, [read_frames(p, frames) for p in paths]), labels


def _class_names(class_csv: Path) -> list[str]:
    return [line.split(",", 1)[1] for line in Path(class_csv).read_text().splitlines()[1:] if line.strip()]


def measure_zero_shot(
    model: nn.Module, model_name: str, root: Path, layout, frames: int, prompt: str, features: Optional[dict] = None,
) -> dict:
    """``zero_shot_novel`` and ``zero_shot_general``: zero-shot accuracy of ``model`` on the held-out
    compositions and on the general validation split (``features``, when given, receives each split's
    frame embeddings ``[N, T, D]`` and labels ``[N]``)."""
    root = Path(root)
    videos = root / layout.video_root
    out: dict = {}
    for split, classes, lst in (
        ("novel", layout.novel_classes, layout.novel_val),
        ("general", layout.general_classes, layout.general_val),
    ):
        names = _class_names(root / classes)
        emb, labels = _encode_list(model, root / lst, videos, frames)
        if features is not None:
            features[split] = (emb, labels)
        acc = zero_shot_accuracy(emb, encode_prompts(model, model_name, names, prompt), labels)
        out[f"zero_shot_{split}"] = {**acc, "chance": 1.0 / len(names), "classes": len(names), "videos": len(labels)}
    return out


def measure_world(model: nn.Module, model_name: str, root: Path, layout, frames: int, prompt: str) -> dict:
    """Zero-shot (novel and general val) and linear-probe (general) accuracy of ``model`` on the world.

    ``layout`` is the world's :class:`bike.world.dataset.WorldLayout`; frames per video: ``frames``.
    """
    root = Path(root)
    videos = root / layout.video_root
    feats: dict = {}
    out: dict = {"frames": frames, "prompt": prompt, **measure_zero_shot(model, model_name, root, layout, frames, prompt, feats)}
    emb, labels = feats["general"]
    phrases = [p for p in (root / layout.lexicon_world).read_text().splitlines() if p.strip()]
    out["lexicon_ranking_general"] = lexicon_ranking(
        emb, labels, _class_names(root / layout.general_classes), phrases,
        encode_prompts(model, model_name, phrases, "{}"))
    train_emb, train_y = _encode_list(model, root / layout.general_train, videos, frames)
    val_emb, val_y = feats["general"]
    k = len(_class_names(root / layout.general_classes))
    out["linear_probe_general"] = {
        "top1": linear_probe_accuracy(F.normalize(train_emb.mean(1), dim=-1), train_y,
                                      F.normalize(val_emb.mean(1), dim=-1), val_y, k),
        "chance": 1.0 / k,
    }
    return out
