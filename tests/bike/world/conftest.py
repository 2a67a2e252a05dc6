"""The test-size world, built once per test session (one call: ``build_world(root, size="test")``)."""

import pytest

from bike.world import build_world


@pytest.fixture(scope="session")
def test_world(tmp_path_factory):
    """A ``test``-size ToyKinetics world (seconds to build): videos, lists, lexicons, a bike-micro CLIP."""
    return build_world(tmp_path_factory.mktemp("world"), size="test")
