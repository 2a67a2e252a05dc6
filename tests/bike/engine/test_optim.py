"""AdamW groups and the warm-up + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from bike.config import TrainConfig
from bike.engine.model import BikeModel
from bike.engine.optim import WarmupCosineSchedule, build_optimizer, warmup_cosine_factor


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.video_branch = nn.Linear(3, 3)
        self.logit_scale = nn.Module()
        self.logit_scale.log_scale = nn.Parameter(torch.tensor(4.6))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_two_groups_clip_lr_for_backbone_and_logit_scale_and_decay_everywhere():
    cfg = TrainConfig(lr_clip=1e-6, lr_new=1e-4, weight_decay=0.2, betas=(0.9, 0.999))
    opt = build_optimizer(_Toy(), cfg, BikeModel.is_pretrained)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"clip", "new"}
    assert groups["clip"]["lr"] == 1e-6 and groups["new"]["lr"] == 1e-4
    assert sorted(groups["clip"]["param_names"]) == ["backbone.bias", "backbone.weight", "logit_scale.log_scale"]
    assert sorted(groups["new"]["param_names"]) == ["video_branch.bias", "video_branch.weight"]
    assert all(g["weight_decay"] == 0.2 and g["betas"] == (0.9, 0.999) for g in opt.param_groups)


def test_no_trainable_parameters_is_a_clear_error():
    m = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(m, TrainConfig(), BikeModel.is_pretrained)


def _official(epoch, warmup, total):
    # the released WarmupCosineAnnealingLR (warm-up from 0, power 1, final factor 0)
    if epoch < warmup:
        return epoch / warmup
    p = min((epoch - warmup) / (total - warmup), 1.0)
    return (math.cos(math.pi * p) + 1) / 2


@pytest.mark.parametrize("epoch", [0.0, 0.5, 2.5, 5.0, 7.3, 17.5, 29.99, 30.0, 31.0])
def test_factor_matches_released_scheduler(epoch):
    assert warmup_cosine_factor(epoch, 5, 30) == pytest.approx(_official(epoch, 5, 30))


def test_schedule_shape_zero_warmup_and_state_roundtrip():
    assert warmup_cosine_factor(0.0, 0, 10) == 1.0
    assert warmup_cosine_factor(10.0, 0, 10) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_factor(3.0, 5, 2) == pytest.approx(0.6)  # warm-up longer than training
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 0.1}])
    sched = WarmupCosineSchedule(opt, warmup_epochs=1, total_epochs=3)
    sched.step(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    sched.step(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # halfway through the cosine
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([{"params": [p], "lr": 0.1}])
    sched2 = WarmupCosineSchedule(opt2, 0, 1)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05) and sched2.total_epochs == 3
