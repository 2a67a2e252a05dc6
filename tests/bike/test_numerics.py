"""Pinned CPU numerics (bike.numerics): the same bytes whatever kernels the environment asks for.

Other CPUs cannot be had here; another CPU's choices are what the environment variables below make
torch, MKL and oneDNN choose on this one (ATen's kernel level, MKL's code branch and instruction set,
oneDNN's ISA, the OpenMP thread count). Unpinned, they change the bytes (the control); pinned, the
world's checkpoint is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bike import numerics

REPO = Path(__file__).resolve().parents[2]
#: What another CPU (or a user's shell) may ask for; each changes the bytes of unpinned training here.
OTHER_KERNELS = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "AUTO",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "DNNL_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "2",
}

# A few optimiser steps of the test world's CLIP on random frames and captions; prints the SHA-256
# of the weights. argv[1] == "pin": pinned numerics, as bikebench runs it; else whatever torch picks.
TRAIN_STEPS = r"""
import hashlib, sys
if sys.argv[1] == "pin":
    from bike.numerics import pin_environment
    pin_environment()
import torch
from bike.numerics import pinned
from bike.world.pretrain import create_model
with pinned(sys.argv[1] == "pin"):
    torch.manual_seed(0)
    model = create_model("bike-micro")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    for _ in range(3):
        img = torch.randn(8, 3, size, size)
        txt = torch.randint(1, 100, (8, model.positional_embedding.shape[0]))
        f, t = model.encode_image(img), model.encode_text(txt)
        loss = (f @ t.T).logsumexp(1).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().numpy().tobytes())
    print(h.hexdigest())
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED_ENV and k not in OTHER_KERNELS}
    env.update(extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _train_hash(mode: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", TRAIN_STEPS, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_environment_kernel_choices_change_unpinned_training_but_not_pinned():
    plain, other = _env(), _env(**OTHER_KERNELS)
    assert _train_hash("free", plain) != _train_hash("free", other)  # the control: the choices matter
    assert _train_hash("pin", plain) == _train_hash("pin", other)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_world_checkpoint_is_identical_under_other_kernel_settings(tmp_path):
    roots = {}
    for name, env in (("plain", _env()), ("other", _env(**OTHER_KERNELS))):
        roots[name] = tmp_path / name
        out = subprocess.run([sys.executable, "-m", "harness.cli", "world", "build", "--size", "test",
                              "--root", str(roots[name])], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
    manifests = {k: json.loads((r / "manifest.json").read_text()) for k, r in roots.items()}
    ckpts = {k: roots[k] / m["checkpoint"] for k, m in manifests.items()}
    assert ckpts["plain"].read_bytes() == ckpts["other"].read_bytes()
    for name, m in manifests.items():
        assert m["checkpoint_sha256"] == _sha256(ckpts[name])
        assert m["numerics"]["pinned"] is True and m["numerics"]["cpu_capability"] == numerics.PINNED_CAPABILITY
        assert m["numerics"]["mkldnn"] is False and m["numerics"]["nnpack"] is False and m["numerics"]["threads"] == 1


def test_pinned_refuses_a_torch_started_without_the_pinned_environment():
    code = ("import torch\nfrom bike.numerics import pinned, NumericsError\n"
            "try:\n    with pinned():\n        pass\nexcept NumericsError as e:\n    print('REFUSED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "before torch is imported" in out.stdout and "ATEN_CPU_CAPABILITY=avx2" in out.stdout


def test_pinned_block_restores_the_switches_it_changed():
    import torch

    before = (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled(), torch.get_num_threads())
    with numerics.pinned() as info:
        assert info["pinned"] is True
        assert (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled(), torch.get_num_threads()) == (False, False, 1)
    assert (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled(), torch.get_num_threads()) == before


def test_pin_environment_overrides_what_the_environment_asked_for():
    env = {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "OTHER": "x"}
    before = numerics.pin_environment(env)
    assert {k: env[k] for k in numerics.PINNED_ENV} == numerics.PINNED_ENV and env["OTHER"] == "x"
    assert before["ATEN_CPU_CAPABILITY"] == "avx512" and before["DNNL_MAX_CPU_ISA"] == ""
    assert numerics.environment_is_pinned(env)


@pytest.mark.parametrize("flag", ["--scale", None])
def test_bikebench_pins_except_at_full_scale(flag, monkeypatch):
    """`bikebench` sets the pinned environment before any command that may build the world or submit
    smoke jobs; `--scale full` leaves the user's environment alone."""
    from harness import cli

    seen = {}
    monkeypatch.setitem(cli.COMMANDS, "status", lambda args: seen.setdefault("pinned", numerics.environment_is_pinned()) and 0)
    for key in numerics.PINNED_ENV:
        monkeypatch.delenv(key, raising=False)
    argv = ["status", "--results", "/nonexistent"] + (["--scale", "full"] if flag else [])
    cli.main(argv)
    assert seen["pinned"] is (flag is None)
    monkeypatch.undo()
    numerics.pin_environment()  # the session's pin (conftest) for the tests that follow
