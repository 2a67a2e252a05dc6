import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from bike.world.config import world_config
from bike.world.generator import split_compositions
from bike.world.pretrain import (
    AUG_ZOOM,
    ShortTextEncoder,
    augment,
    create_model,
    image_stats,
    lr_at,
    multi_positive_clip_loss,
    preprocess,
    pretrain_clip,
    save_checkpoint,
    text_to_frames_loss,
)
from bike.world.snapshots import sample_pool


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


def test_short_text_encoder_reads_a_padding_position_as_the_full_sequence_does():
    torch.manual_seed(0)
    model = create_model("bike-micro").eval()
    tokens = open_clip.get_tokenizer("bike-micro")(["a photo of a red ball rising.", "nothing"])
    enc = ShortTextEncoder(model, torch.unique(tokens))
    at = tokens.argmax(dim=-1) + torch.tensor([5, 20])  # padding positions after each end-of-text token
    with torch.no_grad():
        got = enc(tokens, pool_at=at)
        # open_clip's encode_text over the whole context, read at `at` instead of the end-of-text token
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        want = F.normalize(x[torch.arange(2), at] @ model.text_projection, dim=-1)
        eot = enc(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, eot, atol=1e-3)


def test_multi_positive_loss_reduces_to_clip_loss_with_one_positive():
    logits = torch.randn(5, 5)
    eye = torch.eye(5, dtype=torch.bool)
    ref = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    torch.testing.assert_close(multi_positive_clip_loss(logits, eye), ref)
    truth = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    good = torch.where(truth, 5.0, -5.0)
    assert multi_positive_clip_loss(good, truth) < multi_positive_clip_loss(-good, truth)


def test_multi_positive_loss_with_negative_only_captions():
    """A caption true of no frame is a negative of every frame (frame->text term) and has no
    text->frame term: the loss is, written out, the mean over frames of -sum_j t_ij/n_i log p_ij
    (softmax over all captions) and the mean over the captions with a positive of
    -sum_i t_ij/m_j log q_ij (softmax over frames)."""
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    truth = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    p = logits.softmax(dim=1)
    q = logits.softmax(dim=0)
    i2t = sum(-sum(torch.log(p[i, j]) for j in range(6) if truth[i, j]) / int(truth[i].sum()) for i in range(4)) / 4
    cols = [j for j in range(6) if truth[:, j].any()]
    t2i = sum(-sum(torch.log(q[i, j]) for i in range(4) if truth[i, j]) / int(truth[:, j].sum()) for j in cols) / len(cols)
    got = multi_positive_clip_loss(logits, truth)
    torch.testing.assert_close(got, (i2t + t2i) / 2)
    assert torch.isfinite(got)
    # raising a negative caption's logits raises the loss
    worse = logits.clone()
    worse[:, 4] += 3.0
    assert multi_positive_clip_loss(worse, truth) > got


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


def test_negative_captions_and_tail_grounding_train_what_plain_pretraining_leaves_untouched():
    """Off, the word "wooden" (only in a lexicon phrase no frame shows) keeps its random embedding and
    the padding positions past every caption change by weight decay only (a scaling of their
    initialisation); on, both are trained."""
    from dataclasses import replace

    off_cfg = world_config("test", pretrain_steps=6, pretrain_frames=64, pretrain_batch=32)
    on_cfg = replace(off_cfg, pretrain_negative_captions=4, pretrain_tail_every=2, pretrain_tail_captions=8)
    seen, _ = split_compositions(off_cfg, 0)
    wooden = int(open_clip.get_tokenizer(off_cfg.model)(["wooden"])[0, 1])
    torch.manual_seed(0)
    init = create_model(off_cfg.model)
    off, _ = pretrain_clip(off_cfg, 0, seen)
    on, _ = pretrain_clip(on_cfg, 0, seen)
    row = lambda m: m.token_embedding.weight[wooden].detach()  # noqa: E731
    torch.testing.assert_close(row(off), row(init), rtol=0, atol=0)
    assert (row(on) - row(init)).abs().max() > 1e-4
    tail = lambda m: m.positional_embedding[30:].detach()  # noqa: E731  (no caption is 30 tokens long)
    assert F.cosine_similarity(tail(off), tail(init), dim=1).min() > 1 - 1e-6
    assert F.cosine_similarity(tail(on), tail(init), dim=1).min() < 1 - 1e-3


def test_pretrain_logit_scale_starts_the_pretraining_at_that_scale_and_the_clamp_holds_it_there():
    """``WorldConfig.pretrain_logit_scale``: off, the scale starts at open_clip's 1/0.07 (ln 14.3) and moves
    little in a few steps; at 100 it starts at CLIP's clamp, and the loss never sees more than 100."""
    import math
    from dataclasses import replace

    off_cfg = world_config("test", pretrain_steps=6, pretrain_frames=64, pretrain_batch=32)
    seen, _ = split_compositions(off_cfg, 0)
    off, _ = pretrain_clip(off_cfg, 0, seen)
    on, _ = pretrain_clip(replace(off_cfg, pretrain_logit_scale=100.0), 0, seen)
    assert abs(float(off.logit_scale) - math.log(1 / 0.07)) < 0.05
    assert abs(min(float(on.logit_scale), math.log(100.0)) - math.log(100.0)) < 0.05
    with pytest.raises(ValueError, match="pretrain_logit_scale"):
        world_config("test", pretrain_logit_scale=0.5)
    with pytest.raises(ValueError, match="pretrain_logit_scale"):
        world_config("test", pretrain_logit_scale=200.0)


def test_text_to_frames_loss_is_the_text_half_of_the_multi_positive_loss():
    """Written from its definition: for each caption, minus the mean log-softmax over the batch's frames
    of the frames it is true of."""
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    truth = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    expected = []
    for u in range(3):
        logp = logits[:, u] - torch.logsumexp(logits[:, u], dim=0)
        expected.append(-logp[truth[:, u]].mean())
    torch.testing.assert_close(text_to_frames_loss(logits, truth), torch.stack(expected).mean())


def test_prefix_grounding_trains_the_word_positions_towards_the_frames_their_prefix_names():
    """On, the output at the colour word of "a red ball rising" (the prefix "a red") is trained as a query
    over the frames: it moves, and its similarity to the frames that show its colour rises more than
    off, where only the end-of-text outputs are trained."""
    from dataclasses import replace

    from bike.backbone import ClipBackbone

    off_cfg = world_config("test", pretrain_steps=80, pretrain_frames=128, pretrain_batch=64)
    on_cfg = replace(off_cfg, pretrain_prefix_every=1, pretrain_prefix_captions=32)
    seen, _ = split_compositions(off_cfg, 0)
    pool = sample_pool(off_cfg, 0, seen, 128)
    gaps = {}
    for name, cfg in (("off", off_cfg), ("on", on_cfg)):
        model, stats = pretrain_clip(cfg, 0, seen)
        if name == "on":
            assert len(stats.losses) == 80
        bb = ClipBackbone(model, open_clip.get_tokenizer(cfg.model))
        mean, std, size = image_stats(model)
        with torch.no_grad():
            img = F.normalize(model.encode_image(preprocess(torch.from_numpy(pool.frames), mean, std, size)), dim=-1)
            gap = []
            for c, colour in enumerate(pool.vocab.colours):
                shows = (pool.colour == c).any(1) & (pool.shape >= 0).any(1)
                if not shows.any() or shows.all():
                    continue
                tok = bb.tokenize([f"a {colour} ball rising"])
                word = F.normalize(bb.encode_text(tok).tokens[0, 2], dim=-1)  # the output at the colour word
                sim = img @ word
                gap.append(float(sim[torch.from_numpy(shows)].mean() - sim[torch.from_numpy(~shows)].mean()))
        gaps[name] = float(np.mean(gap))
    assert gaps["on"] > gaps["off"] + 0.05, gaps


def test_augment_shifts_the_frame_by_at_most_pretrain_shift_of_its_side():
    """``WorldConfig.pretrain_shift``: the sampling window moves by at most that share of the frame's
    side, so a centred spot moves by at most ``shift / zoom`` (the zoom, 0.8-1.0, scales about the centre
    and the flip mirrors about it): the default 0.03 keeps it within 2.4 pixels at 64, 0.125 takes it
    past half a 16-pixel patch."""
    size = 64
    x = torch.zeros(256, 3, size, size)
    x[:, :, 30:34, 30:34] = 1.0  # a spot at the centre

    def displacement(share: float) -> torch.Tensor:
        y = augment(x, torch.Generator().manual_seed(0), size, share)[:, 0]
        w = y / y.sum(dim=(1, 2), keepdim=True)
        grid = torch.arange(size, dtype=torch.float32) + 0.5
        cx = (w.sum(dim=1) * grid).sum(dim=1) - size / 2
        cy = (w.sum(dim=2) * grid).sum(dim=1) - size / 2
        return torch.maximum(cx.abs(), cy.abs())

    small, large = displacement(0.03), displacement(0.125)
    zoom_min = AUG_ZOOM[0]
    assert small.max() <= 0.03 * size / zoom_min + 0.25 and large.max() <= 0.125 * size / zoom_min + 0.25
    assert large.max() > 8.0 and small.max() > 0.02 * size
    assert world_config("default").pretrain_shift == 0.03
    with pytest.raises(ValueError, match="pretrain_shift"):
        world_config("default", pretrain_shift=0.7)
