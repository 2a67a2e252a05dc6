"""Precision: fp32 on CPU whatever the field says, a pass-through scaler."""

import contextlib

import pytest
import torch

from bike.engine.precision import autocast, effective_precision, make_grad_scaler


@pytest.mark.parametrize("field", ["fp32", "bf16", "fp16"])
def test_cpu_runs_in_fp32(field):
    assert effective_precision(field, "cpu") == "fp32"
    assert isinstance(autocast(field, "cpu"), contextlib.nullcontext)
    scaler = make_grad_scaler(field, "cpu")
    assert not scaler.is_enabled()
    loss = torch.tensor(2.0, requires_grad=True)
    assert scaler.scale(loss) is loss


def test_cuda_keeps_the_field_and_bad_values_fail():
    assert effective_precision("bf16", "cuda") == "bf16"
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        effective_precision("fp8", "cpu")


def test_precision_is_a_profile_switch():
    """The released train.py defaults to `--precision amp`: fp16 autocast with a GradScaler."""
    from bike.config import RunConfig

    assert RunConfig().train.precision == "fp16"
    assert RunConfig(profile="paper").train.precision == "bf16"
    assert RunConfig(profile="paper", train={"precision": "fp32"}).train.precision == "fp32"
