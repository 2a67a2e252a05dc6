"""Shared test set-up: offline hub, quiet MLflow, small thread counts."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from bike.numerics import pin_environment  # noqa: E402

pin_environment()  # before torch: the test world and smoke-scale runs use the pinned kernels, as bikebench does

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def rng():
    """A seeded torch generator for reproducible random inputs."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def test_world(tmp_path_factory):
    """A ``test``-size ToyKinetics world (seconds to build): videos, lists, lexicons, a bike-micro CLIP."""
    from bike.world import build_world

    return build_world(tmp_path_factory.mktemp("world"), size="test")


_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_leftover_process_group():
    """A test that leaves a torch.distributed group, or torchrun variables in ``os.environ``, behind
    would make later runs distributed (and SLURM jobs submitted later inherit the variables): restore
    both after every test."""
    saved = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
