"""bike.official: released-layout checkpoints (tiny widths, random weights) against a reference written here
from the released formulas (OpenAI CLIP's towers, the authors' ``video_header``: TF-style LayerNorm ε 1e-12,
``x + pos`` → blocks → ``+ x``, VCS ``softmax(sims / 0.01)`` over frames averaged over the 77 positions)."""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from bike.official import (
    OfficialCheckpointError,
    convert_official_state,
    load_official_checkpoint,
    official_checkpoint_state,
    official_key_map,
)

VW, VL, PATCH, RES = 64, 2, 8, 32  # vision width, layers, patch, resolution (grid 4)
TW, TL, D, VOCAB, CTX = 128, 2, 64, 49408, 77  # text width (2 heads), layers, embed dim, vocab, context
CLASSES = ["riding a bike", "juggling balls", "cooking", "surfing water"]


# ------------------------------------------------------------------------------ released layout
def _block_params(prefix: str, width: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    n = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    return {
        f"{prefix}attn.in_proj_weight": n(3 * width, width), f"{prefix}attn.in_proj_bias": n(3 * width),
        f"{prefix}attn.out_proj.weight": n(width, width), f"{prefix}attn.out_proj.bias": n(width),
        f"{prefix}ln_1.weight": 1 + n(width) * 5, f"{prefix}ln_1.bias": n(width),
        f"{prefix}mlp.c_fc.weight": n(4 * width, width), f"{prefix}mlp.c_fc.bias": n(4 * width),
        f"{prefix}mlp.c_proj.weight": n(width, 4 * width), f"{prefix}mlp.c_proj.bias": n(width),
        f"{prefix}ln_2.weight": 1 + n(width) * 5, f"{prefix}ln_2.bias": n(width),
    }


def released_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """OpenAI CLIP's state-dict layout (clip/model.py of the authors' code), random weights."""
    g = torch.Generator().manual_seed(seed)
    n = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {
        "visual.conv1.weight": n(VW, 3, PATCH, PATCH) * 0.05,
        "visual.class_embedding": n(VW) * VW ** -0.5,
        "visual.positional_embedding": n((RES // PATCH) ** 2 + 1, VW) * VW ** -0.5,
        "visual.ln_pre.weight": 1 + 0.1 * n(VW), "visual.ln_pre.bias": 0.1 * n(VW),
        "visual.ln_post.weight": 1 + 0.1 * n(VW), "visual.ln_post.bias": 0.1 * n(VW),
        "visual.proj": n(VW, D) * VW ** -0.5,
        "token_embedding.weight": n(VOCAB, TW) * 0.02,
        "positional_embedding": n(CTX, TW) * 0.01,
        "ln_final.weight": 1 + 0.1 * n(TW), "ln_final.bias": 0.1 * n(TW),
        "text_projection": n(TW, D) * TW ** -0.5,
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for i in range(VL):
        sd.update(_block_params(f"visual.transformer.resblocks.{i}.", VW, g))
    for i in range(TL):
        sd.update(_block_params(f"transformer.resblocks.{i}.", TW, g))
    return sd


def released_video_head(seed: int = 1, layers: int = 6) -> dict[str, torch.Tensor]:
    """``video_header(Transf)``: frame_position_embeddings [77, D] + 6 blocks of width D."""
    g = torch.Generator().manual_seed(seed)
    sd = {"frame_position_embeddings.weight": torch.randn(77, D, generator=g) * 0.02}
    for i in range(layers):
        sd.update(_block_params(f"transformer.resblocks.{i}.", D, g))
    return sd


def save_released(path: Path, clip: dict, head: dict, prefix: str = "module.") -> Path:
    torch.save({"epoch": 29, "model_state_dict": {prefix + k: v for k, v in clip.items()},
                "fusion_model_state_dict": {prefix + k: v for k, v in head.items()},
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 5e-6, "params": [0, 1]}]}}, path)
    return path


# ---------------------------------------------------------------------------- reference formulas
def ln_torch(x, sd, p, eps=1e-5):  # OpenAI CLIP: torch LayerNorm
    return F.layer_norm(x, (x.shape[-1],), sd[p + "weight"], sd[p + "bias"], eps)


def ln_tf(x, sd, p, eps=1e-12):  # the released video head: "TF style (epsilon inside the square root)"
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    return sd[p + "weight"] * ((x - u) / torch.sqrt(s + eps)) + sd[p + "bias"]


def block(x, sd, p, heads, ln, mask=None):
    """ResidualAttentionBlock on x [L, N, W] (sequence first, as nn.MultiheadAttention in the released code)."""
    L, N, W = x.shape
    h = ln(x, sd, p + "ln_1.")
    qkv = h @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]
    q, k, v = qkv.chunk(3, dim=-1)
    split = lambda t: t.reshape(L, N * heads, W // heads).transpose(0, 1)  # noqa: E731
    att = split(q) @ split(k).transpose(1, 2) / math.sqrt(W // heads)
    if mask is not None:
        att = att + mask
    o = (att.softmax(-1) @ split(v)).transpose(0, 1).reshape(L, N, W)
    x = x + o @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
    h = ln(x, sd, p + "ln_2.") @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]


def ref_encode_image(sd, img):
    x = F.conv2d(img, sd["visual.conv1.weight"], stride=PATCH)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1) + sd["visual.positional_embedding"]
    x = ln_torch(x, sd, "visual.ln_pre.").permute(1, 0, 2)
    for i in range(VL):
        x = block(x, sd, f"visual.transformer.resblocks.{i}.", VW // 64, ln_torch)
    return ln_torch(x.permute(1, 0, 2)[:, 0], sd, "visual.ln_post.") @ sd["visual.proj"]


def ref_encode_text(sd, tokens):
    x = (sd["token_embedding.weight"][tokens] + sd["positional_embedding"]).permute(1, 0, 2)
    mask = torch.full((CTX, CTX), float("-inf")).triu_(1)
    for i in range(TL):
        x = block(x, sd, f"transformer.resblocks.{i}.", TW // 64, ln_torch, mask)
    x = ln_torch(x.permute(1, 0, 2), sd, "ln_final.")
    tokens_emb = x @ sd["text_projection"]
    return tokens_emb[torch.arange(x.shape[0]), tokens.argmax(-1)], tokens_emb


def ref_video_head(head, frames, text_tok, cls, interaction):
    """video_header.get_logits of the released code."""
    b, t, _ = frames.shape
    x = frames
    if head:
        x = x + head["frame_position_embeddings.weight"][:t]
        x = x.permute(1, 0, 2)
        for i in range(6):
            x = block(x, head, f"transformer.resblocks.{i}.", TW // 64, ln_tf)
        x = x.permute(1, 0, 2) + frames
    if interaction == "DP":
        v = x.mean(1)
        return (v / v.norm(dim=-1, keepdim=True)) @ (cls / cls.norm(dim=-1, keepdim=True)).t()
    cls = cls / cls.norm(dim=-1, keepdim=True)
    v = x / x.norm(dim=-1, keepdim=True)
    w = text_tok / text_tok.norm(dim=-1, keepdim=True)
    sims = torch.einsum("awd,btd->abwt", w, v)
    att = F.softmax(sims / 0.01, dim=-1).mean(dim=-2)
    v_att = torch.einsum("abt,btd->abd", att, v)
    return torch.einsum("abd,ad->ab", v_att, cls).t()


def reference_logits(clip, head, clips, interaction="VCS"):
    tokens = open_clip.tokenize([f"This is a video about {c}" for c in CLASSES])
    cls, tok = ref_encode_text(clip, tokens)
    b, t = clips.shape[:2]
    frames = ref_encode_image(clip, clips.flatten(0, 1)).reshape(b, t, -1)
    return ref_video_head(head, frames, tok, cls, interaction)


@pytest.fixture(scope="module")
def clip_state():
    return released_clip_state()


@pytest.fixture(scope="module")
def clips():
    return torch.randn(2, 8, 3, RES, RES, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("with_head,interaction", [(True, "vcs"), (False, "vcs"), (True, "mean")])
def test_logits_equal_the_released_formulas(tmp_path, clip_state, clips, with_head, interaction):
    head = released_video_head() if with_head else {}
    path = save_released(tmp_path / "released.pt", clip_state, head)
    model = load_official_checkpoint(path, interaction=interaction)
    cfg = model.model_config
    assert (cfg.vision_width, cfg.vision_layers, cfg.patch_size, cfg.image_resolution) == (VW, VL, PATCH, RES)
    assert (cfg.text_width, cfg.text_layers, cfg.embed_dim, cfg.epoch) == (TW, TL, D, 29)
    assert cfg.temporal == ("transformer" if with_head else "none")
    if with_head:
        assert (cfg.temporal_layers, cfg.temporal_heads, cfg.max_frames) == (6, TW // 64, 77)
        assert model.video_branch.temporal.resblocks[0].ln_1.eps == 1e-12
    assert model.attribute_heads is None
    ours = model.video_logits(clips, model.class_text(CLASSES))
    ref = reference_logits(clip_state, head, clips, "DP" if interaction == "mean" else "VCS")
    assert ours.dtype == torch.float32 and ours.shape == (2, len(CLASSES))
    assert (ours - ref).abs().max().item() <= 1e-5
    assert ref.std() > 1e-3  # not a degenerate comparison


def test_every_key_is_mapped(clip_state):
    head = released_video_head()
    mapping = official_key_map(clip_state, head)
    assert set(mapping) == set(clip_state) | {f"fusion_model_state_dict/{k}" for k in head}
    assert mapping["visual.conv1.weight"] == ["backbone.model.visual.conv1.weight"]
    assert mapping["transformer.resblocks.1.mlp.c_fc.bias"] == ["backbone.model.transformer.resblocks.1.mlp.c_fc.bias"]
    assert mapping["logit_scale"] == ["backbone.model.logit_scale", "logit_scale.log_scale"]
    assert mapping["fusion_model_state_dict/frame_position_embeddings.weight"] == ["video_branch.temporal.position_embedding.weight"]
    assert mapping["fusion_model_state_dict/transformer.resblocks.5.attn.in_proj_weight"] == [
        "video_branch.temporal.resblocks.5.attn.in_proj_weight"]
    attrs = {"query_fc.0.weight": torch.zeros(D, D), "sentence_fc.2.bias": torch.zeros(D)}
    m = official_key_map({}, attrs)
    assert m["fusion_model_state_dict/query_fc.0.weight"] == ["attributes.heads.class_head.0.weight"]
    assert m["fusion_model_state_dict/sentence_fc.2.bias"] == ["attributes.heads.sentence_head.2.bias"]
    # the mapped keys are exactly those of the modules that are built
    state = convert_official_state(clip_state, head)
    from bike.official import build_clip, build_video_branch, infer_model_config

    cfg = infer_model_config(clip_state, head)
    own = {f"backbone.model.{k}" for k in build_clip(cfg).state_dict()} | {
        f"video_branch.{k}" for k in build_video_branch(cfg).state_dict()} | {"logit_scale.log_scale"}
    assert set(state) == own


def test_unknown_and_missing_keys_are_named(tmp_path, clip_state):
    bad = dict(clip_state, **{"visual.extra_token": torch.zeros(3)})
    del bad["ln_final.bias"]
    path = save_released(tmp_path / "bad.pt", bad, {})
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_checkpoint(path)
    assert "bad.pt" in str(err.value) and "ln_final.bias" in str(err.value) and "visual.extra_token" in str(err.value)
    path = save_released(tmp_path / "badhead.pt", clip_state, {"frame_position_embeddings.weight": torch.zeros(77, D), "odd.w": torch.zeros(1)})
    with pytest.raises(OfficialCheckpointError, match=r"badhead\.pt.*fusion_model_state_dict.*odd\.w"):
        load_official_checkpoint(path)
    torch.save({"model": {}}, tmp_path / "ours.pt")
    with pytest.raises(OfficialCheckpointError, match=r"ours\.pt.*missing.*model_state_dict"):
        load_official_checkpoint(tmp_path / "ours.pt")


def test_half_precision_attribute_heads_and_init_from(tmp_path, clip_state):
    g = torch.Generator().manual_seed(5)
    attrs = {f"{h}.{i}.{p}": torch.randn(*((D, D) if p == "weight" else (D,)), generator=g) * 0.1
             for h in ("query_fc", "sentence_fc") for i in (0, 2) for p in ("weight", "bias")}
    path = save_released(tmp_path / "attr.pt", {k: v.half() for k, v in clip_state.items()}, attrs, prefix="")
    model = load_official_checkpoint(path)
    assert model.video_branch is None and model.model_config.head == "attributes"
    x = torch.randn(3, D, generator=g)
    q = F.relu(x @ attrs["query_fc.0.weight"].t() + attrs["query_fc.0.bias"]) @ attrs["query_fc.2.weight"].t() + attrs["query_fc.2.bias"]
    s = F.relu(x @ attrs["sentence_fc.0.weight"].t() + attrs["sentence_fc.0.bias"]) @ attrs["sentence_fc.2.weight"].t() + attrs["sentence_fc.2.bias"]
    sent, cls = model.attribute_heads(x, x)
    assert torch.allclose(cls, q, atol=1e-6) and torch.allclose(sent, s, atol=1e-6)
    assert model.clip.model.visual.conv1.weight.dtype == torch.float32
    # bike.engine.checkpoint.load_checkpoint reads a released file as init_from
    from bike.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)["model"]
    assert state == {} or set(state) == set(official_checkpoint_state(path))
    assert torch.equal(state["attributes.heads.class_head.0.weight"], attrs["query_fc.0.weight"])
