"""Device meshes and the logical-axis rules that map parameter and activation names onto them.

The models name their axes (``batch``, ``embed``, ``mlp``, ``heads``, ``vocab``...); these rules
decide which mesh axis, if any, shards each. ``data`` splits the batch; ``model`` splits the
wide dimensions of the matrices (tensor parallelism). One CPU device and a TPU pod slice run
the same code.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("positions", None),
    ("segments", None),
    ("classes", None),
    ("embed_factor", None),
)


AXES = ("data", "model")


def make_mesh(shape: dict[str, int] | None = None) -> Mesh:
    """A mesh over all devices with axes ``data`` and ``model``; one size may be -1 (the rest).
    Axes not given have size 1; the default is pure data parallelism."""
    sizes = {"data": -1, "model": 1} if shape is None else {axis: 1 for axis in AXES} | dict(shape)
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ValueError(f"mesh {shape}: unknown axes {sorted(unknown)}; the rules use {AXES}")
    n = jax.device_count()
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh {shape}: at most one axis may be -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    if free:
        sizes[free[0]] = n // known
    if math.prod(sizes.values()) != n:
        raise ValueError(f"mesh {shape} does not use the {n} available devices exactly")
    devices = np.asarray(jax.devices()).reshape(tuple(sizes.values()))
    return Mesh(devices, tuple(sizes))


def logical_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree whose leaves carry logical axis names (``nn.Partitioned`` boxes)."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, RULES)


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Shard the batch axis (after ``leading`` unsharded axes) over ``data``."""
    return NamedSharding(mesh, P(*([None] * leading), "data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict, sharding: NamedSharding) -> dict:
    """This host's numpy rows -> global jax arrays laid out over the mesh."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)
