"""The tiny CLIP of the test world has learned something true about the world (its attributes mean something)."""

import torch

from bike.world.generator import split_compositions
from bike.world.measure import encode_prompts, encode_videos
from bike.world.pretrain import create_model
from bike.world.snapshots import sample_pool
from bike.world.config import world_config


def test_colour_zero_shot_beats_chance_and_random_weights(test_world):
    cfg = world_config("test")
    seen, _ = split_compositions(cfg, 0)
    pool = sample_pool(cfg, seed=4242, comps=seen, n=256)  # frames never seen in pretraining
    keep = pool.colour[:, 0] >= 0
    keep &= pool.colour[:, 0] < len(cfg.colours)
    frames = pool.frames[keep][:, None]  # as one-frame videos
    truth = pool.colour[keep, 0]

    def accuracy(model):
        emb = encode_videos(model, list(frames))[:, 0]
        text = encode_prompts(model, cfg.model, [f"a photo of a {c} shape" for c in cfg.colours], "{}")
        return float(((emb @ text.T).argmax(-1).numpy() == truth).mean())

    torch.manual_seed(0)
    trained = accuracy(create_model(cfg.model, pretrained=str(test_world.checkpoint)).eval())
    random = accuracy(create_model(cfg.model).eval())
    assert trained > 0.8 and trained > random + 0.2
