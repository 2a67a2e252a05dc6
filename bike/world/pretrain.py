"""Contrastive pretraining of the tiny CLIP (``bike-tiny`` / ``bike-micro``) on ToyKinetics snapshots.

The world's stand-in for CLIP's web-scale image–text pretraining: frames of the world paired with
captions drawn from what they show. The loss is CLIP's symmetric contrastive loss with every true
frame–caption pair of the batch a positive (captions repeat and partial captions are true of many
frames), i.e. cross-entropy against the uniform distribution over the true pairs, in both directions.

Speed on CPU: the text tower runs on each batch's distinct captions only, cut after the longest
end-of-text token (exact for CLIP's causal text transformer: no position attends to a later one), and
only the rows of the token-embedding table that the captions use are trained (the other ~49 k rows keep
their random initialisation, like the rows of words a real CLIP never saw).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from bike.rundir import atomic_write_torch
from bike.world.captions import negative_captions, prefix_captions, sample_captions, truth_matrix, vocabulary_phrases
from bike.world.config import WorldConfig
from bike.world.generator import STREAM_PRETRAIN_STEPS, Composition
from bike.world.snapshots import SnapshotPool, sample_pool

log = logging.getLogger(__name__)

#: Directory of the ``bike-tiny`` / ``bike-micro`` open_clip configs.
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
#: Augmentation: zoom (side of the crop relative to the frame) and flip; the largest shift is
#: ``WorldConfig.pretrain_shift``.
AUG_ZOOM = (0.8, 1.0)
AUG_FLIP_P = 0.5
#: CLIP's logit scale is clamped at 100 (temperature 0.01).
MAX_LOGIT_SCALE = math.log(100.0)


class _NoRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly": for the world's CLIP
    that is the plan (it is pretrained next), not a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def create_model(name: str, pretrained: Optional[str] = None) -> nn.Module:
    """An open_clip model of the tiny configs (registered here), optionally from a local checkpoint."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    if pretrained is not None:
        return open_clip.create_model(name, pretrained=pretrained)
    quiet = _NoRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None)
    finally:
        root.removeFilter(quiet)


def image_stats(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean ``[3]``, std ``[3]``, image size) the model's preprocessing uses."""
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), dtype=torch.float32)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    return mean, std, size


def preprocess(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> normalised float ``[N, 3, size, size]`` (bilinear resize when needed)."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - mean[:, None, None]) / std[:, None, None]


def augment(x: torch.Tensor, gen: torch.Generator, size: int, shift_share: float) -> torch.Tensor:
    """Random zoom, shift (up to ``shift_share`` of the frame's side: ``WorldConfig.pretrain_shift``) and
    horizontal flip of ``x`` ``[B, 3, H, W]`` -> ``[B, 3, size, size]``."""
    b = x.shape[0]
    zoom = torch.empty(b).uniform_(*AUG_ZOOM, generator=gen)
    flip = torch.where(torch.rand(b, generator=gen) < AUG_FLIP_P, -1.0, 1.0)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * shift_share * 2  # grid coordinates span 2 per frame
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = zoom * flip
    theta[:, 1, 1] = zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ShortTextEncoder(nn.Module):
    """``model.encode_text`` on tokens cut after the last end-of-text token, with a trainable copy of
    the token-embedding rows in ``token_ids`` (written back by :meth:`write_back`).

    For CLIP's causal text tower the pooled (end-of-text) feature of the cut sequence equals the one of
    the full 77-position sequence.
    """

    def __init__(self, model: nn.Module, token_ids: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.token_ids = token_ids
        self.rows = nn.Parameter(model.token_embedding.weight.detach()[token_ids].clone())
        remap = torch.full((model.token_embedding.num_embeddings,), -1, dtype=torch.long)
        remap[token_ids] = torch.arange(len(token_ids))
        self.register_buffer("remap", remap, persistent=False)

    def forward(self, tokens: torch.Tensor, pool_at: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens ``[U, L]`` (zero padded) -> normalised features ``[U, D]``.

        ``pool_at`` ``[U]``: read each caption's feature there instead of at its end-of-text token (a
        padding position after it, or a word before it).
        """
        m = self.model
        eot = tokens.argmax(dim=-1) if pool_at is None else pool_at
        length = int(eot.max()) + 1
        local = self.remap[tokens[:, :length]]
        if (local < 0).any():
            raise ValueError("ShortTextEncoder: a caption uses a token outside the pretraining vocabulary")
        x = F.embedding(local, self.rows) + m.positional_embedding[:length]
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0]), eot]
        proj = m.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained rows into the model's token-embedding table."""
        self.model.token_embedding.weight[self.token_ids] = self.rows.detach()

    @torch.no_grad()
    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the model's state dict as it stands, the trained rows in its token-embedding table
        (what :meth:`write_back` and ``state_dict`` would give now, the model left untouched)."""
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        state["token_embedding.weight"][self.token_ids] = self.rows.detach()
        return state


def multi_positive_clip_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with several positives.

    logits ``[B, U]`` (frames x distinct captions, scaled); truth bool ``[B, U]`` (every row has at least
    one True; a column without one is a caption true of no frame: a negative of every frame, with no
    text->frames term). Cross-entropy to the uniform distribution over the true pairs, frames->text and
    text->frames, averaged.
    """
    t = truth.float()
    i2t = -(t / t.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    cols = truth.any(0)
    if not bool(cols.all()):  # captions true of no frame (negatives only) have no text->frame term
        truth, logits = truth[:, cols], logits[:, cols]
    return (i2t + text_to_frames_loss(logits, truth)) / 2


def text_to_frames_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The text -> frames half of :func:`multi_positive_clip_loss`: logits ``[B, U]``, truth bool ``[B, U]``
    (every column true of at least one frame); each caption's cross-entropy over the batch's frames to
    the uniform distribution over its true frames, averaged over captions."""
    t = truth.float()
    return -(t / t.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()


def lr_at(step: int, steps: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class PretrainStats:
    steps: int
    seconds: float
    final_loss: float
    pool_frames: int
    pool_seconds: float
    losses: list[float] = field(default_factory=list)
    #: the state dict after ``WorldConfig.backbone_step`` steps (None when that option is off)
    backbone_state: Optional[dict[str, torch.Tensor]] = field(default=None, repr=False)


class _Tokens:
    """Tokenizer with a cache (captions repeat)."""

    def __init__(self, name: str) -> None:
        self.tok = open_clip.get_tokenizer(name)
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in self.cache]
        if missing:
            for t, row in zip(missing, self.tok(missing)):
                self.cache[t] = row
        return torch.stack([self.cache[t] for t in texts])


def pretrain_clip(
    cfg: WorldConfig,
    seed: int,
    compositions: Sequence[Composition],
    progress: Optional[Callable[[str], None]] = None,
) -> tuple[nn.Module, PretrainStats]:
    """Pretrain ``cfg.model`` from scratch on a pool of snapshots of ``compositions``.

    Deterministic for a given (cfg, seed) on one machine (seeded numpy/torch, fixed thread count).
    Returns the model (eval mode) and the training statistics.
    """
    say = progress or (lambda msg: log.info(msg))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.pretrain_threads)
    try:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        pool = sample_pool(cfg, seed, compositions, cfg.pretrain_frames)
        pool_seconds = time.perf_counter() - t0
        say(f"pretraining pool: {len(pool)} frames in {pool_seconds:.1f}s")
        model = create_model(cfg.model)
        if cfg.pretrain_logit_scale:
            with torch.no_grad():
                model.logit_scale.fill_(math.log(cfg.pretrain_logit_scale))
        return _train(model, pool, cfg, seed, say, pool_seconds)
    finally:
        torch.set_num_threads(threads)


def _train(
    model: nn.Module, pool: SnapshotPool, cfg: WorldConfig, seed: int, say: Callable[[str], None], pool_seconds: float
) -> tuple[nn.Module, PretrainStats]:
    tokens = _Tokens(cfg.model)
    vocab_ids = torch.unique(tokens(vocabulary_phrases(pool.vocab, negatives=cfg.pretrain_negative_captions > 0,
                                                      lists=cfg.pretrain_list_p > 0)))
    text = ShortTextEncoder(model, vocab_ids)  # includes 0, the padding (after end-of-text: no effect)
    model.token_embedding.weight.requires_grad_(False)
    mean, std, size = image_stats(model)
    frames = torch.from_numpy(pool.frames)
    decay, no_decay = [], []
    for name, p in list(model.named_parameters()) + [("rows", text.rows)]:
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and name != "rows" else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.pretrain_weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.pretrain_lr,
    )
    rng = np.random.default_rng([seed, STREAM_PRETRAIN_STEPS])
    gen = torch.Generator().manual_seed(seed)
    batch = min(cfg.pretrain_batch, len(pool))
    bare = cfg.pretrain_bare_captions
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    backbone_state: Optional[dict[str, torch.Tensor]] = None
    for step in range(cfg.pretrain_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.pretrain_steps, cfg.pretrain_warmup, cfg.pretrain_lr)
        idx = rng.choice(len(pool), size=batch, replace=False)
        texts, specs = sample_captions(pool, idx, rng, cfg.pretrain_list_p, bare=bare, bare_full=cfg.pretrain_bare_full)
        first: dict[str, int] = {}
        for u, t in enumerate(texts):
            first.setdefault(t, u)
        uniq = list(first)
        truth = torch.from_numpy(truth_matrix(pool, idx, [specs[first[t]] for t in uniq]))
        if cfg.pretrain_negative_captions:
            negatives = negative_captions(cfg.pretrain_negative_captions, set(uniq), rng, bare=bare)
            uniq += negatives
            truth = torch.cat([truth, torch.zeros(len(idx), len(negatives), dtype=torch.bool)], dim=1)
        x = augment(preprocess(frames[idx], mean, std, frames.shape[1]), gen, size, cfg.pretrain_shift)
        img = F.normalize(model.encode_image(x), dim=-1)
        tok = tokens(uniq)
        txt = text(tok)
        if cfg.pretrain_tail_every and step % cfg.pretrain_tail_every == 0:
            # ground the padding positions: some captions read at a random position after their end
            pick = torch.from_numpy(rng.choice(len(uniq), size=min(cfg.pretrain_tail_captions, len(uniq)), replace=False))
            eot = tok[pick].argmax(dim=-1)
            context = tok.shape[1]
            at = eot + torch.from_numpy(rng.integers(0, context - eot.numpy()))
            txt = txt.index_copy(0, pick, text(tok[pick], pool_at=at))
        scale = model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        loss = multi_positive_clip_loss(scale * img @ txt.T, truth)
        if cfg.pretrain_prefix_every and step % cfg.pretrain_prefix_every == 0:
            # ground the word positions: caption prefixes read at their last word, as queries over the
            # batch's frames (text -> frames only: each frame keeps the targets of its own captions)
            prefixes, prefix_specs = prefix_captions(pool, idx, rng, cfg.pretrain_prefix_captions, bare=bare)
            if prefixes:
                ptok = tokens(prefixes)
                ptxt = text(ptok, pool_at=ptok.argmax(dim=-1) - 1)
                ptruth = torch.from_numpy(truth_matrix(pool, idx, prefix_specs))
                loss = loss + text_to_frames_loss(scale * img @ ptxt.T, ptruth) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step + 1 == cfg.backbone_step:
            backbone_state = text.snapshot()  # the CLIP after backbone_step steps: the runs' backbone
        if (step + 1) % max(cfg.pretrain_steps // 10, 1) == 0:
            recent = float(np.mean(losses[-20:]))
            say(f"pretrain step {step + 1}/{cfg.pretrain_steps} loss {recent:.3f} ({time.perf_counter() - t0:.0f}s)")
    text.write_back()
    model.token_embedding.weight.requires_grad_(True)
    model.eval()
    seconds = time.perf_counter() - t0
    final = float(np.mean(losses[-20:])) if losses else float("nan")
    return model, PretrainStats(cfg.pretrain_steps, seconds, final, len(pool), pool_seconds, losses, backbone_state)


def save_checkpoint(model: nn.Module | dict[str, torch.Tensor], path: Path) -> Path:
    """``torch.save`` the state dict of ``model`` (or a state dict) to ``path`` atomically (temporary
    name, then rename)."""
    return atomic_write_torch(path, model if isinstance(model, dict) else model.state_dict())
