"""bike.temporal: the temporal transformer against a loop reference, its structure, and the mean pool."""

from __future__ import annotations

import math

import pytest
import torch

from bike.temporal import TemporalTransformer, mean_pool


def _ref_layer_norm(x: torch.Tensor, ln) -> torch.Tensor:
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _ref_block(x: torch.Tensor, block) -> torch.Tensor:
    """One pre-LN block on one video ``[T, D]``, with explicit loops over heads and frames."""
    t_len, d = x.shape
    heads = block.attn.num_heads
    dh = d // heads
    w_in, b_in = block.attn.in_proj_weight, block.attn.in_proj_bias
    h = torch.stack([_ref_layer_norm(x[t], block.ln_1) for t in range(t_len)])
    q, k, v = (h @ w_in[i * d : (i + 1) * d].t() + b_in[i * d : (i + 1) * d] for i in range(3))
    attn_out = torch.zeros(t_len, d)
    for head in range(heads):
        sl = slice(head * dh, (head + 1) * dh)
        for t in range(t_len):
            scores = torch.stack([(q[t, sl] * k[s, sl]).sum() / math.sqrt(dh) for s in range(t_len)])
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            attn_out[t, sl] = sum(weights[s] * v[s, sl] for s in range(t_len))
    x = x + attn_out @ block.attn.out_proj.weight.t() + block.attn.out_proj.bias
    out = torch.zeros_like(x)
    for t in range(t_len):
        hidden = _ref_layer_norm(x[t], block.ln_2) @ block.mlp.c_fc.weight.t() + block.mlp.c_fc.bias
        hidden = hidden * torch.sigmoid(1.702 * hidden)
        out[t] = x[t] + hidden @ block.mlp.c_proj.weight.t() + block.mlp.c_proj.bias
    return out


def _randomise(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial biases and LayerNorm affine parameters, so the reference checks all of them."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def test_matches_loop_reference(rng):
    tt = TemporalTransformer(width=32, layers=2, heads=4, max_len=10)
    _randomise(tt, rng)
    x = torch.randn(2, 5, 32, generator=rng)
    with torch.no_grad():
        out = tt(x)
        for b in range(2):
            h = x[b] + tt.position_embedding.weight[:5]
            for block in tt.resblocks:
                h = _ref_block(h, block)
            torch.testing.assert_close(out[b], h + x[b], atol=1e-5, rtol=1e-5)


def test_output_is_blocks_of_x_plus_pos_plus_x(rng):
    tt = TemporalTransformer(width=64, layers=3)
    x = torch.randn(3, 8, 64, generator=rng)
    with torch.no_grad():
        pos = tt.position_embedding.weight[:8]
        torch.testing.assert_close(tt(x), tt.blocks(x + pos) + x)
        # the residual adds x without the position embedding
        assert (tt(x) - (tt.blocks(x + pos) + x + pos)).abs().max() > 1e-3


def test_position_rows_used_are_zero_to_t_minus_one(rng):
    tt = TemporalTransformer(width=32, layers=1, max_len=12)
    x = torch.randn(1, 4, 32, generator=rng)
    with torch.no_grad():
        before = tt(x)
        tt.position_embedding.weight[4:].add_(1.0)  # rows past T-1: no effect
        torch.testing.assert_close(tt(x), before)
        tt.position_embedding.weight[3].add_(1.0)
        assert (tt(x) - before).abs().max() > 1e-3
    with pytest.raises(ValueError, match="exceed the position table"):
        tt(torch.randn(1, 13, 32))


@pytest.mark.parametrize("width,heads", [(512, 8), (768, 12), (64, 1), (32, 1), (128, 2)])
def test_default_heads(width, heads):
    tt = TemporalTransformer(width=width, layers=1)
    assert tt.heads == heads and tt.resblocks[0].attn.num_heads == heads
    assert tt.position_embedding.weight.shape == (77, width)
    assert len(TemporalTransformer(width=width).resblocks) == 6


def test_initialisation():
    torch.manual_seed(0)
    tt = TemporalTransformer(width=256, layers=2)
    block = tt.resblocks[0]
    for w in (block.mlp.c_fc.weight, block.mlp.c_proj.weight, block.attn.out_proj.weight, tt.position_embedding.weight):
        assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    for bias in (block.mlp.c_fc.bias, block.mlp.c_proj.bias, block.attn.out_proj.bias, block.attn.in_proj_bias):
        assert torch.count_nonzero(bias) == 0
    assert torch.all(block.ln_1.weight == 1) and torch.count_nonzero(block.ln_1.bias) == 0
    assert type(block.mlp.gelu).__name__ == "QuickGELU"
    torch.manual_seed(0)
    again = TemporalTransformer(width=256, layers=2)
    for a, b in zip(tt.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_gradients_reach_every_parameter(rng):
    tt = TemporalTransformer(width=64, layers=2)
    x = torch.randn(2, 8, 64, generator=rng, requires_grad=True)
    tt(x).square().sum().backward()
    assert x.grad is not None
    for name, p in tt.named_parameters():
        if name.startswith("position_embedding"):
            assert p.grad[:8].abs().sum() > 0 and p.grad[8:].abs().sum() == 0
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mean_pool_matches_loop_reference(rng):
    frames = torch.randn(3, 5, 16, generator=rng)
    out = mean_pool(frames)
    assert out.shape == (3, 16)
    for b in range(3):
        acc = torch.zeros(16)
        for t in range(5):
            acc += frames[b, t]
        acc = acc / 5
        torch.testing.assert_close(out[b], acc / acc.norm(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_layer_norm_epsilon_is_the_released_heads():
    """The released video head's TemporalTransformer builds its LayerNorms with eps=1e-12."""
    from bike.config import RunConfig
    from bike.video_branch import VideoBranch

    branch = VideoBranch.from_config(RunConfig().model, 32)
    norms = [m for m in branch.temporal.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 6 and all(m.eps == 1e-12 for m in norms)
    # the LayerNorm is the textbook one at that ε: (x - mean) / sqrt(var + 1e-12) * w + b
    x = torch.randn(4, 32) * 1e-5  # small activations, where ε matters
    ln = norms[0]
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
        ref = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-12) * ln.weight + ln.bias
        torch.testing.assert_close(ln(x), ref, atol=1e-4, rtol=1e-4)
