import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from bike.world.config import world_config
from bike.world.generator import split_compositions
from bike.world.pretrain import (
    ShortTextEncoder,
    create_model,
    lr_at,
    multi_positive_clip_loss,
    pretrain_clip,
    save_checkpoint,
)


def test_short_text_encoder_equals_full_encode_text():
    torch.manual_seed(0)
    model = create_model("bike-micro").eval()
    tok = open_clip.get_tokenizer("bike-micro")
    texts = ["a photo of a red ball rising.", "This is a video about blue square", "nothing"]
    tokens = tok(texts)
    enc = ShortTextEncoder(model, torch.unique(tokens))
    with torch.no_grad():
        short = enc(tokens)
        full = F.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="vocabulary"):
        enc(tok(["an unseen word: zebra"]))


def test_multi_positive_loss_reduces_to_clip_loss_with_one_positive():
    logits = torch.randn(5, 5)
    eye = torch.eye(5, dtype=torch.bool)
    ref = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    torch.testing.assert_close(multi_positive_clip_loss(logits, eye), ref)
    truth = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    good = torch.where(truth, 5.0, -5.0)
    assert multi_positive_clip_loss(good, truth) < multi_positive_clip_loss(-good, truth)


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(99, 100, 10, 1.0) < 0.01


def test_pretraining_learns_and_checkpoint_loads_through_open_clip(tmp_path):
    cfg = world_config("test", pretrain_steps=80, pretrain_frames=256, pretrain_batch=64)
    seen, _ = split_compositions(cfg, 0)
    model, stats = pretrain_clip(cfg, 0, seen)
    assert np.mean(stats.losses[-10:]) < np.mean(stats.losses[:10]) - 0.2
    path = save_checkpoint(model, tmp_path / "clip.pt")
    loaded = create_model(cfg.model, pretrained=str(path))  # open_clip's own pretrained=<path> loader
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_pretraining_is_deterministic():
    cfg = world_config("test", pretrain_steps=5, pretrain_frames=64)
    seen, _ = split_compositions(cfg, 0)
    a, sa = pretrain_clip(cfg, 0, seen)
    b, sb = pretrain_clip(cfg, 0, seen)
    c, _ = pretrain_clip(cfg, 1, seen)
    assert sa.losses == sb.losses
    torch.testing.assert_close(a.visual.conv1.weight, b.visual.conv1.weight)
    assert not torch.equal(a.visual.conv1.weight, c.visual.conv1.weight)
