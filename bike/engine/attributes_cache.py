"""Generated attributes of a run, cached in ``<run_dir>/cache/attributes.json`` (keyed by video id).

Generation (``bike.attributes``): a frozen CLIP (``attributes.generator_backbone`` /
``generator_pretrained``, default the run's backbone and weights) embeds the single centre view of
each video (test sampling), the frame embeddings are averaged, and the lexicon
(``attributes.lexicon``) is ranked by cosine; the top ``attributes.max_attributes`` phrases are kept in
rank order (any smaller k is a slice).

The file records what produced it (lexicon, generator, frames, resolution, max_k); a cache is reused —
from this run, or from the ``init_from`` run — only when these agree, and only the missing videos are
generated. In a distributed run every rank ranks its share of the videos and rank 0 writes the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from bike.attributes import encode_phrases, load_lexicon, rank_lexicon, video_embedding
from bike.config import RunConfig
from bike.data.lists import VideoRecord
from bike.engine.caches import attributes_cache_path
from bike.engine.checkpoint import atomic_write_json, init_run_dir
from bike.engine.logging import RunLogger

ATTRIBUTES_FORMAT = 1


def generator_signature(config: RunConfig) -> dict:
    """What determines the generated attributes (a cache is reusable when this matches)."""
    a, m = config.attributes, config.model
    return {
        "format": ATTRIBUTES_FORMAT,
        "lexicon": a.lexicon,
        "generator_backbone": a.generator_backbone or m.backbone,
        "generator_pretrained": a.generator_pretrained if a.generator_backbone else (a.generator_pretrained or m.pretrained),
        "frames": m.frames,
        "resolution": m.resolution,
        "max_attributes": a.max_attributes,
        "single_view_frame": config.eval.single_view_frame,
    }


def resolve_lexicon(config: RunConfig) -> list[str]:
    """Phrases of ``attributes.lexicon``: a built-in name, a file, or ``<data.root>/lexicons/<name>.txt``
    (where the miniature world keeps its lexicons)."""
    name = config.attributes.lexicon
    try:
        return load_lexicon(name)
    except FileNotFoundError:
        candidate = Path(config.data.root or ".") / "lexicons" / f"{name}.txt"
        if candidate.is_file():
            return load_lexicon(candidate)
        raise FileNotFoundError(
            f"attributes.lexicon={name!r}: not a built-in lexicon, not a file, and {candidate} does not exist"
        ) from None


def read_attributes(path: Path, signature: dict) -> dict[str, list[str]]:
    """The cached phrases of a file if it was produced with ``signature`` (else empty)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("signature") != signature:
        return {}
    return {str(k): list(v) for k, v in data.get("videos", {}).items()}


def ensure_attributes(
    config: RunConfig,
    run_dir: Path,
    records: Sequence[VideoRecord],
    device: torch.device,
    logger: Optional[RunLogger] = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, list[str]]:
    """Ranked phrases for every record (by video id), generating only what no usable cache holds."""
    signature = generator_signature(config)
    path = attributes_cache_path(run_dir)
    known = read_attributes(path, signature)
    if config.init_from:
        src = init_run_dir(config.init_from)
        if src is not None and Path(src).resolve() != Path(run_dir).resolve():
            inherited = read_attributes(attributes_cache_path(src), signature)
            for k, v in inherited.items():
                known.setdefault(k, v)
    missing = [r for r in records if r.video_id not in known]
    missing = list({r.video_id: r for r in missing}.values())
    if missing:
        if logger:
            logger.info("generating attributes of %d video(s) (lexicon %s)", len(missing), config.attributes.lexicon)
        mine = missing[rank::world_size]
        produced = generate_for_records(config, mine, device, logger) if mine else {}
        if world_size > 1:
            parts: list = [None] * world_size
            dist.all_gather_object(parts, produced)
            for p in parts:
                known.update(p)
        else:
            known.update(produced)
    if rank == 0 and (missing or not path.is_file()):
        atomic_write_json(path, {"signature": signature, "videos": known})
    return known


@torch.no_grad()
def generate_for_records(
    config: RunConfig, records: Sequence[VideoRecord], device: torch.device, logger: Optional[RunLogger] = None
) -> dict[str, list[str]]:
    """Rank the lexicon for ``records`` with the frozen generator CLIP: ``{video_id: phrases}``."""
    from bike.backbone import load_clip
    from bike.engine.datasets import build_dataset, eval_loader

    sig = generator_signature(config)
    backbone = load_clip(sig["generator_backbone"], sig["generator_pretrained"], device,
                         image_size=config.model.resolution if _needs_resize(sig["generator_backbone"], config.model.resolution) else None)
    backbone.eval()
    phrases = resolve_lexicon(config)
    lex = encode_phrases(backbone, phrases)
    dataset = build_dataset(config, records, train=False, num_classes=_num_classes(config), views=(1, 1),
                            mean=backbone.image_mean, std=backbone.image_std)
    loader = eval_loader(dataset, config.eval.batch_size, config.data.num_workers, 1, 0)
    out: dict[str, list[str]] = {}
    batches = logger.iterate(loader, len(loader), "attributes") if logger else loader
    for batch in batches:
        emb = video_embedding(backbone.encode_frames(batch.clips.to(device)))
        idx, _ = rank_lexicon(emb, lex.to(emb.device), config.attributes.max_attributes)
        for vid, row in zip(batch.video_ids, idx.tolist()):
            out[vid] = [phrases[i] for i in row]
    return out


def _needs_resize(backbone_name: str, resolution: int) -> bool:
    import open_clip

    cfg = open_clip.get_model_config(backbone_name.replace("/", "-"))
    return bool(cfg) and cfg["vision_cfg"].get("image_size") != resolution


def _num_classes(config: RunConfig) -> int:
    from bike.data.lists import read_classes

    return len(read_classes(config.data))
