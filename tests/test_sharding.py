"""train.sharding: meshes and their errors (one CPU device here; multi-device meshes in test_train)."""

import pytest

from train import sharding


def test_default_mesh_is_data_parallel_over_every_device():
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "model": 1}


@pytest.mark.parametrize("shape, message", [
    ({"data": 1, "pipeline": 1}, r"unknown axes \['pipeline'\]"),
    ({"data": -1, "model": -1}, "at most one axis may be -1"),
    ({"data": 2, "model": 1}, "does not use the 1 available devices exactly"),
])
def test_bad_mesh_shapes_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(shape)
