"""The snippet of docs/python-api.md runs as written, on the tiny bike-micro CLIP instead of ViT-B/32."""

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def _snippet() -> str:
    match = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/python-api.md has no python block"
    return match.group(1)


def test_python_api_snippet_runs_on_the_tiny_clip(capsys):
    code = _snippet()
    real_load = 'load_clip("ViT-B-32", pretrained="/models/ViT-B-32.pt")'
    assert real_load in code, "docs/python-api.md snippet changed: update this test's substitution"
    code = code.replace(real_load, 'load_clip("bike-micro", pretrained=None)')
    from bike.backbone import load_clip

    probe = load_clip("bike-micro", pretrained=None)
    size = probe.image_size
    clips = torch.randn(2, 4, 3, size, size)  # [B, T, 3, H, W], already normalised
    scope: dict = {"clips": clips}
    exec(compile(code, str(DOC), "exec"), scope)
    b, k, t = 2, 2, 4
    assert scope["logits"].shape == (b, k) and scope["saliency"].shape == (b, k, t)
    assert scope["s_v"].shape == (b, k) and scope["s_a"].shape == (b, k)
    assert scope["scores"].shape == (b, k)
    assert len(scope["ranked"]) == b and len(scope["ranked"][0]) == 10
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("This is a video about ") and printed.count(",") == 4
