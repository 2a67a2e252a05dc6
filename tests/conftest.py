"""Shared test set-up: offline hub, quiet MLflow, small thread counts."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_NUM_THREADS", "2")

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


@pytest.fixture(autouse=True)
def _no_leftover_process_group():
    """A test that leaves a torch.distributed group behind would make later in-process runs
    distributed: tear it down after every test."""
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
