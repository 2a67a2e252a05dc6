"""bike.backbone: loading (random, local files, offline tags), frame/text encoders, prompt word masks."""

from __future__ import annotations

import json
import os
import warnings

import open_clip
import pytest
import torch

from bike import backbone as bb_mod
from bike.backbone import (
    MODEL_CONFIG_DIR,
    ClipBackbone,
    PretrainedUnavailableError,
    load_clip,
    load_clip_from_config,
    set_category_encoder_trainable,
)
from bike.config import ModelConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tiny() -> ClipBackbone:
    torch.manual_seed(0)
    return load_clip("bike-tiny").eval()


def _act_name(backbone: ClipBackbone) -> str:
    return type(backbone.model.visual.transformer.resblocks[0].mlp.gelu).__name__


def test_configs_registered_and_attributes(tiny):
    assert MODEL_CONFIG_DIR.is_dir()
    assert {"bike-tiny", "bike-micro"} <= set(open_clip.list_models())
    assert (tiny.embed_dim, tiny.text_width, tiny.vision_width, tiny.image_size) == (64, 64, 64, 64)
    assert tiny.image_mean == pytest.approx(CLIP_MEAN) and tiny.image_std == pytest.approx(CLIP_STD)
    micro = load_clip("bike-micro")
    assert (micro.embed_dim, micro.image_size) == (32, 32)


def test_encode_frames_matches_per_frame_image_tower(tiny, rng):
    x = torch.randn(2, 3, 3, 64, 64, generator=rng)
    with torch.no_grad():
        out = tiny.encode_frames(x)
        assert out.shape == (2, 3, 64)
        for b in range(2):
            for t in range(3):
                ref = tiny.model.encode_image(x[b, t : t + 1])[0]
                torch.testing.assert_close(out[b, t], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        tiny.encode_frames(x[0])


def test_encode_text_cls_equals_open_clip_encode_text(tiny):
    tokens, _ = tiny.tokenize_prompts(["abseiling", "juggling soccer ball", "air drumming"])
    with torch.no_grad():
        feats = tiny.encode_text(tokens)
        ref = tiny.model.encode_text(tokens)
    assert feats.cls.shape == (3, 64) and feats.tokens.shape == (3, 77, 64)
    assert (feats.cls - ref).abs().max().item() < 1e-6
    eot = tokens.argmax(dim=-1)
    torch.testing.assert_close(feats.tokens[torch.arange(3), eot], feats.cls)


def test_encode_text_per_position_is_causal(tiny):
    tokens, _ = tiny.tokenize_prompts(["abseiling"])
    changed = tokens.clone()
    changed[0, 7] = 1000  # the end-of-text token moves nothing before position 7
    with torch.no_grad():
        a = tiny.encode_text(tokens).tokens
        b = tiny.encode_text(changed).tokens
    torch.testing.assert_close(a[0, :7], b[0, :7])
    assert (a[0, 7] - b[0, 7]).abs().max() > 1e-4


def test_word_mask_marks_the_class_name_tokens(tiny):
    names = ["juggling soccer ball", "abseiling", "video"]
    tokens, mask = tiny.tokenize_prompts(names, template="This is a video about {}")
    assert tokens.dtype == torch.long and mask.dtype == torch.bool and mask.shape == tokens.shape
    for k, name in enumerate(names):
        alone = tiny.tokenizer([name])[0]
        ids = [int(i) for i in alone[1 : int(alone.argmax())]]
        pos = mask[k].nonzero().flatten().tolist()
        assert tokens[k, pos].tolist() == ids
        assert pos == list(range(pos[0], pos[0] + len(ids)))
        assert pos[0] == 6  # SOT + 5 template words
    # a name that also appears in the template is located at the placeholder, not the template word
    assert mask[2].nonzero().flatten().tolist() == [6]


def test_word_mask_name_in_the_middle_and_errors(tiny):
    tokens, mask = tiny.tokenize_prompts(["playing guitar"], template="a clip of {} outdoors")
    pos = mask[0].nonzero().flatten().tolist()
    assert pos == [4, 5]  # SOT a clip of | playing guitar | outdoors EOT
    with pytest.raises(ValueError, match="placeholder"):
        tiny.tokenize_prompts(["x"], template="no placeholder")


def _save_state(model, path, wrap: bool, prefix: str = "") -> None:
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd} if wrap else sd, path)


@pytest.mark.parametrize("wrap,prefix", [(False, ""), (True, "module.")])
def test_load_local_checkpoint(tmp_path, wrap, prefix):
    torch.manual_seed(1)
    src = load_clip("bike-micro")
    path = tmp_path / "ckpt.pt"
    _save_state(src.model, path, wrap, prefix)
    loaded = load_clip("bike-micro", pretrained=str(path))
    for (k, a), (_, b) in zip(src.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_checkpoint_errors(tmp_path):
    micro = load_clip("bike-micro")
    path = tmp_path / "micro.pt"
    _save_state(micro.model, path, wrap=False)
    with pytest.raises(ValueError, match="micro.pt.*does not fit"):
        load_clip("bike-tiny", pretrained=str(path))
    with pytest.raises(ValueError, match="neither an open_clip tag"):
        load_clip("bike-tiny", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("no-such-model")


def test_offline_tag_fails_at_once_with_local_path_hint():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(PretrainedUnavailableError, match="local checkpoint file path"):
        load_clip("ViT-B-32", pretrained="openai")


def test_openai_tag_requests_quick_gelu(monkeypatch):
    seen = {}

    def fake_create(name, pretrained=None, **kwargs):
        seen.update(kwargs, name=name, pretrained=pretrained)
        raise RuntimeError("no network")

    monkeypatch.setattr(bb_mod.open_clip, "create_model", fake_create)
    with pytest.raises(PretrainedUnavailableError):
        load_clip("ViT-B-32", pretrained="openai")
    assert seen["force_quick_gelu"] is True and seen["pretrained"] == "openai"


@pytest.fixture
def gelu_config(tmp_path):
    """A tiny config trained without QuickGELU (plain GELU), registered for this test."""
    cfg = json.loads((MODEL_CONFIG_DIR / "bike-micro.json").read_text())
    cfg["quick_gelu"] = False
    d = tmp_path / "cfgs"
    d.mkdir()
    (d / "bike-test-gelu.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    return "bike-test-gelu"


def test_quick_gelu_for_openai_files(tmp_path, gelu_config):
    src = load_clip(gelu_config)
    assert _act_name(src) == "GELU"
    plain = tmp_path / "weights.pt"
    _save_state(src.model, plain, wrap=False)
    assert _act_name(load_clip(gelu_config, pretrained=str(plain))) == "GELU"
    hub_like = tmp_path / "clip_224.openai.bin"
    _save_state(src.model, hub_like, wrap=False)
    assert _act_name(load_clip(gelu_config, pretrained=str(hub_like))) == "QuickGELU"
    assert _act_name(load_clip(gelu_config, pretrained=str(hub_like), quick_gelu=False)) == "GELU"
    hub_cache = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc"
    hub_cache.mkdir(parents=True)
    _save_state(src.model, hub_cache / "open_clip_pytorch_model.bin", wrap=False)
    assert _act_name(load_clip(gelu_config, pretrained=str(hub_cache / "open_clip_pytorch_model.bin"))) == "QuickGELU"
    # OpenAI's TorchScript release format
    model = src.model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.randn(1, 3, 32, 32), torch.randint(0, 99, (1, 77))), check_trace=False)
        torch.jit.save(traced, str(tmp_path / "release.pt"))
    loaded = load_clip(gelu_config, pretrained=str(tmp_path / "release.pt"))
    assert _act_name(loaded) == "QuickGELU"
    torch.testing.assert_close(loaded.model.token_embedding.weight, model.token_embedding.weight)


def test_category_encoder_frozen_by_default_and_switchable():
    cfg = ModelConfig(backbone="bike-tiny", pretrained=None, resolution=64)
    backbone = load_clip_from_config(cfg)
    text_ids = {id(p) for p in backbone.text_parameters()}
    visual_ids = {id(p) for p in backbone.visual_parameters()}
    assert text_ids and not text_ids & visual_ids
    assert id(backbone.model.token_embedding.weight) in text_ids and id(backbone.model.text_projection) in text_ids
    assert not any(p.requires_grad for p in backbone.text_parameters())
    assert all(p.requires_grad for p in backbone.visual_parameters())
    set_category_encoder_trainable(backbone, True)
    assert all(p.requires_grad for p in backbone.text_parameters())
    tuned = load_clip_from_config(cfg.model_copy(update={"finetune_category_encoder": True}))
    assert all(p.requires_grad for p in tuned.text_parameters())


def test_resolution_override():
    cfg = ModelConfig(backbone="bike-tiny", pretrained=None, resolution=32)
    backbone = load_clip_from_config(cfg)
    assert backbone.image_size == 32
    assert backbone.encode_frames(torch.randn(1, 2, 3, 32, 32)).shape == (1, 2, 64)


def test_custom_text_tower_models(tmp_path):
    """CustomTextCLIP (text tower in ``model.text``): same per-token path, same [CLS]."""
    cfg = json.loads((MODEL_CONFIG_DIR / "bike-micro.json").read_text())
    cfg["custom_text"] = True
    (tmp_path / "bike-test-custom.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    backbone = load_clip("bike-test-custom")
    assert type(backbone.model).__name__ == "CustomTextCLIP"
    tokens, _ = backbone.tokenize_prompts(["abseiling", "air drumming"])
    with torch.no_grad():
        assert (backbone.encode_text(tokens).cls - backbone.model.encode_text(tokens)).abs().max() < 1e-6
    set_category_encoder_trainable(backbone, False)
    assert not any(p.requires_grad for p in backbone.model.text.parameters())
    assert all(p.requires_grad for p in backbone.model.visual.parameters())
