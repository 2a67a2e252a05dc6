"""Generated attributes of a run, cached in ``<run_dir>/cache/attributes.json`` (keyed by video id).

Generation (``bike.attributes``): a frozen CLIP (``attributes.generator_backbone`` /
``generator_pretrained``, default the run's backbone and weights) embeds the single centre view of
each video (test sampling), the frame embeddings are averaged, and the lexicon
(``attributes.lexicon``) is ranked by cosine; the top ``attributes.max_attributes`` phrases are kept in
rank order (any smaller k is a slice).

The file records what produced it (lexicon, generator, frames, resolution, max_k); a cache is reused —
from this run, or from the ``init_from`` run — only when these agree, and only the missing videos are
generated. In a distributed run rank 0 decides what is missing, every rank ranks its share of those
videos, rank 0 writes the file and the other ranks read it.

Runs that do not descend from one another (Table 6's ``bike`` and ``mean_pool_attr`` stage-2 runs, on
two different stage-1 runs) still share one generator: with ``$BIKE_SHARED_CACHE`` set (the harness
sets it to ``<results>/cache``) the phrases also go to a store shared by every run,
``$BIKE_SHARED_CACHE/attributes/<key>.json``, keyed by the generator signature and the digest of the
``bike`` sources. A run takes what the store holds and generates the rest under a file lock on that
key, so two runs started together generate each video once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from bike.attributes import encode_phrases, load_lexicon, rank_lexicon, video_embedding
from bike.config import RunConfig
from bike.data.lists import VideoRecord
from bike.engine.caches import attributes_cache_path
from bike.engine.runner import reuse_sources
from bike.engine.logging import RunLogger
from bike.rundir import atomic_write_json, file_lock

ATTRIBUTES_FORMAT = 1
#: Environment variable naming the directory of the cross-run store (unset: no store).
SHARED_CACHE_ENV = "BIKE_SHARED_CACHE"


def generator_signature(config: RunConfig) -> dict:
    """What determines the generated attributes (a cache is reusable when this matches)."""
    a, m = config.attributes, config.model
    backbone, pretrained = a.generator(m)
    return {
        "format": ATTRIBUTES_FORMAT,
        "lexicon": a.lexicon,
        "generator_backbone": backbone,
        "generator_pretrained": pretrained,
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


def shared_store_path(signature: dict) -> Optional[Path]:
    """The cross-run store file of ``signature`` under ``$BIKE_SHARED_CACHE`` (None when unset)."""
    from bike.engine.score_reuse import code_digest

    root = os.environ.get(SHARED_CACHE_ENV)
    if not root:
        return None
    key = hashlib.sha256(json.dumps({"signature": signature, "code": code_digest()}, sort_keys=True).encode()).hexdigest()
    return Path(root) / "attributes" / f"{key[:24]}.json"


@contextlib.contextmanager
def _store_lock(store: Optional[Path]) -> Iterator[None]:
    """An exclusive lock on ``<store>.lock`` (``bike.rundir.file_lock``); none without a store."""
    if store is None:
        yield
        return
    with file_lock(store.with_name(store.name + ".lock")):
        yield


def ensure_attributes(
    config: RunConfig,
    run_dir: Path,
    records: Sequence[VideoRecord],
    device: torch.device,
    logger: Optional[RunLogger] = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, list[str]]:
    """Ranked phrases for every record (by video id), generating only what no usable cache holds.

    Sources, in order: this run's cache, the ``init_from`` run's, the cross-run store (see the module
    docstring). Returns the same mapping on every rank.
    """
    signature = generator_signature(config)
    path = attributes_cache_path(run_dir)
    store = shared_store_path(signature) if rank == 0 else None
    with _store_lock(store):
        known: dict[str, list[str]] = {}
        own: dict[str, list[str]] = {}
        missing_ids: list[str] = []
        if rank == 0:
            own = read_attributes(path, signature)
            known = dict(own)
            for src in reuse_sources(config):
                if src.resolve() != Path(run_dir).resolve():
                    for k, v in read_attributes(attributes_cache_path(src), signature).items():
                        known.setdefault(k, v)
            wanted = list(dict.fromkeys(r.video_id for r in records))
            if store is not None and any(v not in known for v in wanted):
                shared = read_attributes(store, signature)
                for v in wanted:
                    if v not in known and v in shared:
                        known[v] = shared[v]
            missing_ids = [v for v in wanted if v not in known]
        if world_size > 1:
            box = [missing_ids]
            dist.broadcast_object_list(box, src=0)
            missing_ids = box[0]
        if missing_ids:
            if logger:
                logger.info("generating attributes of %d video(s) (lexicon %s)", len(missing_ids), config.attributes.lexicon)
            by_id = {r.video_id: r for r in records}
            mine = [by_id[v] for v in missing_ids[rank::world_size]]
            produced = generate_for_records(config, mine, device, logger) if mine else {}
            if world_size > 1:
                parts: list = [None] * world_size
                dist.all_gather_object(parts, produced)
                produced = {k: v for p in parts for k, v in p.items()}
            known.update(produced)
            if store is not None:  # rank 0: merge into the store while holding its lock
                merged = read_attributes(store, signature)
                merged.update(produced)
                atomic_write_json(store, {"signature": signature, "videos": merged})
        if rank == 0 and (known.keys() != own.keys() or not path.is_file()):  # the other ranks read this file
            atomic_write_json(path, {"signature": signature, "videos": known})
    if world_size > 1:
        dist.barrier()
        if rank != 0:
            known = read_attributes(path, signature)
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
