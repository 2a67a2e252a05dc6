"""Temporal modelling over frame embeddings: the "Transf" temporal transformer and the mean pool.

``TemporalTransformer`` follows the authors' released video header: residual attention blocks
(pre-LayerNorm, MLP ×4, QuickGELU) over the T frame embeddings plus a learned position embedding
(a table of ``max_len`` rows, rows 0..T−1 used), and the output is ``blocks(x + pos) + x`` — the outer
residual adds the input *without* the position embedding.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

#: Width of one attention head: heads default to width // HEAD_WIDTH (8 for B models, 12 for L).
HEAD_WIDTH = 64
#: Rows of the position-embedding table (CLIP's context length in the released code).
DEFAULT_MAX_LEN = 77
#: Standard deviation of the normal initialisation of linear layers and the position embedding.
INIT_STD = 0.02
#: Hidden width of the MLP relative to the block width.
MLP_RATIO = 4


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x), CLIP's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


#: LayerNorm ε of the released video head (``TemporalTransformer`` in the authors' code).
RELEASED_LN_EPS = 1e-12


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (safe under fp16/bf16 autocast), cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(dtype)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; input and output ``[B, T, D]``."""

    def __init__(self, width: int, heads: int, ln_eps: float = RELEASED_LN_EPS) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=ln_eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, width * MLP_RATIO),
                gelu=QuickGELU(),
                c_proj=nn.Linear(width * MLP_RATIO, width),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TemporalTransformer(nn.Module):
    """``[B, T, D] -> [B, T, D]``: ``blocks(x + pos[:T]) + x``.

    Args:
        width: D, the frame-embedding width.
        layers: number of residual attention blocks (6 in BIKE).
        heads: attention heads; default ``max(1, width // 64)``.
        max_len: rows of the learned position embedding (the most frames it accepts).
        ln_eps: ε of the LayerNorms: the released video head's 1e-12 (its TemporalTransformer's
            LayerNorm), not PyTorch's default 1e-5.

    Initialisation as in the released code: linear layers (attention output projection and MLP) and
    the position embedding normal(0, 0.02), their biases zero, LayerNorms (1, 0); the attention input
    projection keeps PyTorch's default (Xavier-uniform weight, zero bias).
    """

    def __init__(self, width: int, layers: int = 6, heads: Optional[int] = None, max_len: int = DEFAULT_MAX_LEN,
                 ln_eps: float = RELEASED_LN_EPS):
        super().__init__()
        heads = max(1, width // HEAD_WIDTH) if heads is None else heads
        if width % heads:
            raise ValueError(f"TemporalTransformer: width {width} is not divisible by heads {heads}")
        self.width, self.layers, self.heads, self.max_len = width, layers, heads, max_len
        self.position_embedding = nn.Embedding(max_len, width)
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, ln_eps) for _ in range(layers)])
        self.apply(_init_weights)

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The residual attention blocks alone, ``[B, T, D] -> [B, T, D]``."""
        return self.resblocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, T, D]`` frame embeddings. Returns ``[B, T, D]``."""
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(f"TemporalTransformer: {t} frames exceed the position table of {self.max_len} rows")
        pos = self.position_embedding.weight[:t].to(x.dtype)
        return self.blocks(x + pos).to(x.dtype) + x


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def mean_pool(frames: torch.Tensor) -> torch.Tensor:
    """Average the frame embeddings, then L2-normalise: ``[B, T, D] -> [B, D]``."""
    return F.normalize(frames.mean(dim=1), dim=-1)
