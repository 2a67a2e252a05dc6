"""Pinned CPU numerics: the same bytes from the same inputs on every x86-64 CPU with AVX2.

torch, MKL, oneDNN and NNPACK pick their vector kernels (and some their blocking) per CPU, so the
world's tiny CLIP and every smoke-scale number used to differ between an AVX-512 Intel and an AVX2
AMD machine; training amplifies the last-bit differences into points of accuracy. Pinned numerics
fix every choice that depends on the machine:

* ATen's kernels at the ``avx2`` level (``ATEN_CPU_CAPABILITY``, read once when torch starts);
* MKL's conditional numerical reproducibility in its ``COMPATIBLE`` branch (``MKL_CBWR``), the
  branch whose results MKL guarantees on every x86 CPU;
* oneDNN and NNPACK off (their kernels choose blockings from the cache sizes), so convolutions and
  matrix products go through ATen and MKL; ``DNNL_MAX_CPU_ISA`` is capped as well;
* one intra-op thread per job (parallel reductions split by the thread count).

The environment part must be in place before torch is imported: :func:`pin_environment` sets it
(whatever the environment asked for) and is called by the ``bikebench`` command line and by every
submitted job before it imports the engine; :func:`pinned` applies the torch part and checks that
the running torch took the pins, raising :class:`NumericsError` with the fix when it did not. This
module does not import torch at import time.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Iterator, MutableMapping, Optional

#: Environment the pinned kernels need, set before torch is imported (values are what each library reads).
PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
#: The capability torch reports when the pin took (``torch.backends.cpu.get_cpu_capability()``).
PINNED_CAPABILITY = "AVX2"
#: Intra-op threads of a pinned job or world build.
PINNED_THREADS = 1
#: Reasons already warned about in this process (a CPU without AVX2 is said once).
_warned: dict[str, bool] = {}
#: Version of the pinned settings above; part of the world's hash (a change rebuilds the world).
NUMERICS_VERSION = 1


class NumericsError(RuntimeError):
    """Pinned numerics were asked for but this process cannot give them; the message says what to do."""


def pin_environment(environ: Optional[MutableMapping[str, str]] = None) -> dict[str, str]:
    """Set :data:`PINNED_ENV` in ``environ`` (default ``os.environ``), overriding what was there.

    Returns the previous values of the variables that changed (``""`` for unset ones). Call it before
    torch is imported: processes started afterwards (local jobs, the world's video writer) inherit it.
    """
    env = os.environ if environ is None else environ
    before = {}
    for key, value in PINNED_ENV.items():
        if env.get(key) != value:
            before[key] = env.get(key, "")
            env[key] = value
    return before


def environment_is_pinned(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    env = os.environ if environ is None else environ
    return all(env.get(k) == v for k, v in PINNED_ENV.items())


def describe() -> dict[str, Any]:
    """What the running torch uses now: capability, oneDNN/NNPACK switches, threads, the pinned variables.

    Imports torch. Written into ``result.json`` and the world's manifest as ``numerics``.
    """
    import torch

    return {
        "pinned": bool(
            environment_is_pinned()
            and torch.backends.cpu.get_cpu_capability() == PINNED_CAPABILITY
            and not torch.backends.mkldnn.enabled
            and not torch._C._get_nnpack_enabled()
            and torch.get_num_threads() == PINNED_THREADS
        ),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": bool(torch.backends.mkldnn.enabled),
        "nnpack": bool(torch._C._get_nnpack_enabled()),
        "threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k, "") for k in PINNED_ENV},
        "torch": torch.__version__,
    }


def check_capability() -> Optional[str]:
    """None when torch runs the pinned kernels; else why not (raises when the pin came too late).

    A CPU without AVX2 (or not x86-64) cannot run them: that returns the reason (numbers will be this
    machine's own). An environment set after torch was imported is a mistake that raises.
    """
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability == PINNED_CAPABILITY and environment_is_pinned():
        return None
    if not environment_is_pinned():
        wanted = " ".join(f"{k}={v}" for k, v in PINNED_ENV.items())
        raise NumericsError(
            "pinned numerics (numerics.pinned: true, every smoke-scale run) need the kernel settings in "
            f"the environment before torch is imported, and this process started torch with "
            f"{ {k: os.environ.get(k, '') for k in PINNED_ENV} }; run it through `bikebench`, call "
            f"bike.numerics.pin_environment() before importing torch, or `export {wanted}`"
        )
    return (f"this CPU runs torch's {capability} kernels, not {PINNED_CAPABILITY} (pinned numerics need an "
            "x86-64 CPU with AVX2): its numbers are this machine's own and will not match a baseline "
            "blessed elsewhere")


@contextlib.contextmanager
def pinned(enabled: bool = True, threads: int = PINNED_THREADS) -> Iterator[dict[str, Any]]:
    """Within the block torch runs the pinned kernels (oneDNN and NNPACK off, ``threads`` threads).

    Yields :func:`describe`'s dict (``{"pinned": False, ...}`` when ``enabled`` is False: nothing
    changes). Restores the previous switches afterwards (jobs of the debug executor share a process).
    Raises :class:`NumericsError` when torch was imported before the environment was pinned; warns
    (once per process) and goes on when the CPU has no AVX2.
    """
    import torch

    if not enabled:
        yield {"pinned": False}
        return
    reason = check_capability()
    if reason is not None and not _warned.get(reason):
        _warned[reason] = True
        warnings.warn(reason, RuntimeWarning, stacklevel=3)
    before = (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled(), torch.get_num_threads())
    torch.backends.mkldnn.enabled = False
    torch._C._set_nnpack_enabled(False)
    torch.set_num_threads(threads)
    try:
        info = describe()
        if reason is not None:
            info["reason"] = reason
        yield info
    finally:
        torch.backends.mkldnn.enabled = before[0]
        torch._C._set_nnpack_enabled(before[1])
        torch.set_num_threads(before[2])

