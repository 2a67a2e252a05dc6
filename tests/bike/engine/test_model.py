"""BikeModel assembly: parameter groups, stage freezing, text features of frozen/finetuned encoders."""

import pytest
import torch

from bike.config import RunConfig
from bike.engine.model import BikeModel

NAMES = ["red ball", "blue square", "green cross"]


def _cfg(**model):
    return RunConfig.model_validate({
        "model": {"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32, "temporal_layers": 1, **model},
        "attributes": {"enabled": True, "train": True, "text_encoder": "bike-micro", "text_encoder_pretrained": None},
    })


def test_groups_and_stage_freezing():
    m = BikeModel.from_config(_cfg(), NAMES)
    m.configure_stage("video", finetune_category_encoder=False)
    train = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.model.visual.") for n in train)
    assert any(n.startswith("video_branch.temporal.") for n in train) and "logit_scale.log_scale" in train
    assert not any(n.startswith("attributes.") for n in train)
    assert "backbone.model.token_embedding.weight" not in train  # frozen category encoder
    assert BikeModel.is_pretrained("logit_scale.log_scale") and not BikeModel.is_pretrained("video_branch.temporal.x")
    m.configure_stage("attributes", finetune_category_encoder=False)
    train = {n for n, p in m.named_parameters() if p.requires_grad}
    assert train and all(n.startswith("attributes.heads.") or n == "logit_scale.log_scale" for n in train)


def test_frozen_text_is_computed_once_finetuned_per_call():
    m = BikeModel.from_config(_cfg(), NAMES)
    m.configure_stage("video", finetune_category_encoder=False)
    full = m.class_text()
    assert full.cls.shape == (3, 32) and full.tokens.shape == (3, 77, 32) and not full.cls.requires_grad
    assert m.class_text() is full  # cached
    sub = m.class_text(torch.tensor([2, 0, 2]))
    torch.testing.assert_close(sub.cls, full.cls[[2, 0, 2]])
    m.configure_stage("video", finetune_category_encoder=True)
    t = m.class_text(torch.tensor([1]))
    assert t.cls.requires_grad and t.cls.shape == (1, 32)


def test_forward_logits_and_weight_loading_errors():
    m = BikeModel.from_config(_cfg(), NAMES)
    logits = m(torch.randn(2, 2, 3, 32, 32))
    assert logits.shape == (2, 3) and logits.abs().max() <= 1.0 + 1e-5  # unscaled, cosine-like
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("attributes.")}
    missing = BikeModel.from_config(_cfg(), NAMES).load_weights(state, "stage1.pt")
    assert missing and all(k.startswith("attributes.") for k in missing)
    bad = dict(state)
    bad["video_branch.temporal.position_embedding.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="stage1.pt.*position_embedding"):
        m.load_weights(bad, "stage1.pt")
    with pytest.raises(ValueError, match="lacks"):
        m.load_weights({}, "empty.pt")


def test_activation_checkpointing_is_a_field():
    m = BikeModel.from_config(_cfg(activation_checkpointing=True), NAMES)
    assert m.backbone.model.visual.transformer.grad_checkpointing
    m.configure_stage("video", finetune_category_encoder=False)
    m.train()
    logits = m(torch.randn(2, 2, 3, 32, 32, requires_grad=False))
    logits.sum().backward()
    assert m.backbone.model.visual.conv1.weight.grad is not None


def test_attributes_use_their_own_text_encoder_when_it_is_another_model():
    """Appendix A.2: the attribute sentences and class names are encoded by the text tower of another
    CLIP (ViT-B/32 for every backbone); here bike-tiny (width 64) for a bike-micro run (width 32)."""
    import torch.nn.functional as F

    from bike.engine.eval_loop import attribute_scores
    from bike.engine.model import attribute_text_encoder

    torch.manual_seed(0)
    cfg = RunConfig.model_validate({
        "model": {"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32, "temporal_layers": 1},
        "attributes": {"enabled": True, "text_encoder": "bike-tiny", "text_encoder_pretrained": None, "num_attributes": 2},
    })
    assert not cfg.attributes.shares_text_tower(cfg.model)
    m = BikeModel.from_config(cfg, NAMES)
    enc = m.attribute_text_encoder
    assert enc is not m.backbone and enc.embed_dim == 64 and m.backbone.embed_dim == 32
    assert attribute_text_encoder("bike-tiny", None) is enc  # loaded once
    assert not any(k.startswith(("_attribute", "attribute_text")) for k in m.state_dict())  # not in checkpoints
    assert all(not p.requires_grad for p in enc.parameters())
    ranked = {"v0": ["rolling", "red"], "v1": ["blue", "square"]}
    scores = attribute_scores(m, ["v0", "v1"], ranked)
    # reference: cosine of the separate text tower's embeddings of "prompt + attributes" and the prompted names
    tok, model = enc.tokenize, enc.model
    with torch.no_grad():
        s = model.encode_text(tok(["This is a video about rolling,red", "This is a video about blue,square"]))
        c = model.encode_text(tok([f"This is a video about {n}" for n in NAMES]))
    expected = F.normalize(s, dim=-1) @ F.normalize(c, dim=-1).t()
    torch.testing.assert_close(torch.from_numpy(scores), expected, atol=1e-5, rtol=1e-5)


def test_finetuning_a_separate_attribute_encoder_is_refused():
    with pytest.raises(ValueError, match="finetune_text_tower needs the attribute encoder to be the run's own text tower"):
        RunConfig.model_validate({"model": {"backbone": "ViT-L-14"}, "attributes": {"finetune_text_tower": True}})


@pytest.mark.parametrize("mode", ["restart", "inherit"])
def test_stage_two_logit_scale_restarts_as_the_released_train_attributes(tmp_path, mode):
    """train_attributes.py builds a fresh CLIP (logit scale ln 100) and loads no stage-1 weights; the
    default `restart` starts stage 2's scale again at ln(1/tau), `inherit` keeps stage 1's."""
    import math

    from bike.engine.checkpoint import save_checkpoint
    from bike.engine.logging import RunLogger
    from bike.engine.runner import load_init_weights

    stage1 = BikeModel.from_config(_cfg(), NAMES)
    with torch.no_grad():
        stage1.logit_scale.log_scale.fill_(3.2)
    save_checkpoint(tmp_path / "s1.pt", {"model": stage1.state_dict()})
    cfg = _cfg().model_copy(update={"stage": "attributes", "init_from": str(tmp_path / "s1.pt")})
    cfg = RunConfig.model_validate({**cfg.model_dump(), "attributes": {**cfg.attributes.model_dump(), "logit_scale": mode}})
    assert RunConfig().attributes.logit_scale == "restart"
    stage2 = BikeModel.from_config(cfg, NAMES)
    load_init_weights(stage2, cfg, RunLogger(tmp_path / "run"), torch.device("cpu"))
    expected = math.log(100.0) if mode == "restart" else 3.2
    assert float(stage2.logit_scale.log_scale.detach()) == pytest.approx(expected, abs=1e-6)
    # the video branch itself is stage 1's either way
    torch.testing.assert_close(stage2.video_branch.state_dict(), stage1.video_branch.state_dict())
