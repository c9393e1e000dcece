"""Device meshes and the logical-axis rules that map parameter and activation names onto them.

The models name their axes (``batch``, ``embed``, ``mlp``, ``heads``, ``vocab``...); these rules
decide which mesh axis, if any, shards each. The mesh has three axes, any of them of size 1:

- ``data``: splits the batch; parameters and optimizer state are replicated.
- ``fsdp``: splits the batch too, and shards parameters, gradients and optimizer state along
  their ``embed`` axis (fully sharded data parallelism: XLA gathers each weight where it is used).
- ``model``: tensor parallelism; splits the attention heads, the MLP width and the vocabulary.

A rule's mesh axis is taken only if the array has not used it already, so an activation
``(batch, length, embed)`` is split over ``data`` x ``fsdp`` by its batch and whole along
``embed``, while a weight ``(embed, mlp)`` is split over ``fsdp`` x ``model``. One CPU device and
a TPU pod slice run the same code; only the mesh shape changes.
"""

from __future__ import annotations

import contextlib
import functools
import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("embed", "fsdp"),
    ("embed_factor", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("positions", None),
    ("segments", None),
    ("classes", None),
)

# What to change when a mesh axis does not divide a parameter axis it shards.
_DIVIDE_HINTS = {
    "heads": "choose a tensor-parallel size (mesh.model) that divides the number of attention heads",
    "mlp": "choose a tensor-parallel size (mesh.model) that divides the MLP width",
    "vocab": "choose a mesh.model that divides the vocabulary, or pad it (--set model.vocab_size={padded})",
    "embed": "choose an fsdp size (mesh.fsdp) that divides the model width",
    "embed_factor": "choose an fsdp size (mesh.fsdp) that divides ALBERT's embedding size",
}


def check_mesh_axes(shape: dict) -> dict:
    """A mesh config's axis names and sizes, checked without looking at the devices."""
    unknown = set(shape) - set(AXES)
    if unknown:
        raise ValueError(f"mesh {shape}: unknown axes {sorted(unknown)}; the axes are {', '.join(AXES)}")
    bad = {k: v for k, v in shape.items() if not isinstance(v, int) or isinstance(v, bool) or v == 0 or v < -1}
    if bad:
        raise ValueError(f"mesh {shape}: sizes must be positive integers or -1, got {bad}")
    if sum(v == -1 for v in shape.values()) > 1:
        raise ValueError(f"mesh {shape}: at most one axis may be -1")
    return dict(shape)


def mesh_shape(shape: dict | None, device_count: int) -> dict[str, int]:
    """Axis sizes for ``device_count`` devices: axes not given have size 1, one size may be -1
    (all remaining devices). The default is pure data parallelism."""
    sizes = {axis: 1 for axis in AXES} | ({"data": -1} if shape is None else check_mesh_axes(shape))
    free = [k for k, v in sizes.items() if v == -1]
    known = math.prod(v for v in sizes.values() if v != -1)
    if free:
        sizes[free[0]] = max(device_count // known, 1)
    if math.prod(sizes.values()) != device_count:
        raise ValueError(
            f"mesh {shape} has {math.prod(sizes.values())} devices but {device_count} are available; "
            "make the product of the axis sizes equal the device count, or give one axis as -1"
        )
    return {axis: sizes[axis] for axis in AXES}


def make_mesh(shape: dict | None = None) -> Mesh:
    """A ``data`` x ``fsdp`` x ``model`` mesh over all devices (see :func:`mesh_shape`), laid
    out by ``jax.make_mesh`` for the interconnect."""
    sizes = mesh_shape(shape, jax.device_count())
    return jax.make_mesh(tuple(sizes.values()), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def batch_parallelism(mesh_sizes: dict[str, int]) -> int:
    """How many ways the batch is split."""
    return math.prod(mesh_sizes[a] for a in BATCH_AXES)


def check_batch(batch_size: int, grad_accum: int, mesh_sizes: dict[str, int]) -> None:
    """Each microbatch (``batch_size / grad_accum`` rows) must split evenly over data x fsdp."""
    ways = batch_parallelism(mesh_sizes)
    if (batch_size // grad_accum) % ways:
        raise ValueError(
            f"data.batch_size={batch_size} (/ data.grad_accum={grad_accum}) does not split over the {ways} "
            f"data-parallel devices (mesh data={mesh_sizes['data']} x fsdp={mesh_sizes['fsdp']}); make "
            f"data.batch_size / data.grad_accum a multiple of {ways}"
        )


def check_divisible(boxed_params, mesh_sizes: dict[str, int]) -> None:
    """Every parameter axis a mesh axis shards must divide evenly (JAX cannot shard unevenly).

    ``boxed_params``: the ``nn.Partitioned`` tree of ``jax.eval_shape(module.init, ...)``, so this
    runs on shapes alone, before anything is compiled. Unboxed leaves (a classifier's head) are
    replicated and always fit."""
    problems = {}
    leaves = jax.tree_util.tree_leaves_with_path(boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for path, leaf in leaves:
        if not isinstance(leaf, nn.Partitioned):
            continue
        for name, size, axes in zip(leaf.names, leaf.value.shape, mesh_axes(leaf.names)):
            ways = math.prod(mesh_sizes[a] for a in axes)
            if size % ways and (name, size) not in problems:
                where = "/".join(str(getattr(k, "key", k)) for k in path)
                split = " x ".join(f"{a}={mesh_sizes[a]}" for a in axes)
                hint = _DIVIDE_HINTS.get(name, "choose mesh sizes that divide it")
                problems[name, size] = (f"{name} axis of size {size} (e.g. {where}) cannot be split {ways} ways "
                                        f"({split}): {hint.format(padded=-(-size // ways) * ways)}")
    if problems:
        raise ValueError("mesh does not fit the model: " + "; ".join(problems.values()))


def logical_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree whose leaves carry logical axis names (``nn.Partitioned`` boxes)."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, RULES)


@contextlib.contextmanager
def axis_rules(mesh: Mesh):
    """The mesh and the rules, for tracing: inside, ``nn.with_logical_constraint`` in the models
    becomes a sharding constraint (outside, flax leaves the activation as it is)."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(RULES):
        yield


def with_axis_rules(fn, mesh: Mesh):
    """``fn``, traced under :func:`axis_rules` whenever ``jax.jit`` traces it."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with axis_rules(mesh):
            return fn(*args, **kwargs)

    return traced


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Shard the batch axis (after ``leading`` unsharded axes) over ``data`` x ``fsdp``."""
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@functools.lru_cache(maxsize=8)
def batch_split(mesh: Mesh) -> tuple[int, int]:
    """``(index, count)``: the batch is cut into ``count`` equal blocks of rows and this process
    feeds block ``index`` (processes whose devices hold the same rows read the same block).

    The data pipelines read only their block: pass these as their ``process_index`` and
    ``process_count``."""
    count = batch_parallelism(dict(mesh.shape))
    blocks = {d.process_index: set() for d in mesh.devices.flat}
    for device, (rows,) in NamedSharding(mesh, P(BATCH_AXES)).devices_indices_map((count,)).items():
        blocks[device.process_index].add(rows.indices(count)[0])
    mine = sorted(blocks[jax.process_index()])
    if mine != list(range(mine[0], mine[0] + len(mine))) or any(len(b) != len(mine) for b in blocks.values()):
        raise ValueError(
            f"the mesh {dict(mesh.shape)} gives processes scattered or unequal parts of the batch; "
            "make the data-parallel axes (data x fsdp) a multiple of the process count"
        )
    return mine[0] // len(mine), count // len(mine)


def global_batch(local: dict, sharding: NamedSharding) -> dict:
    """This process's block of rows (numpy, see :func:`batch_split`) -> global jax arrays laid
    out over the mesh, the rows on the axis ``sharding`` splits over data x fsdp."""
    axis = len(sharding.spec) - 1
    _, blocks = batch_split(sharding.mesh)

    def put(x):
        shape = (*x.shape[:axis], x.shape[axis] * blocks, *x.shape[axis + 1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree.map(put, local)


def mesh_axes(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The mesh axes (possibly none) that split each logical axis of an array, under the rules."""
    return [(a,) if isinstance(a, str) else tuple(a or ()) for a in nn.logical_to_mesh_axes(names, RULES)]


def shard_shape(shape: tuple[int, ...], names: tuple[str, ...], mesh_sizes: dict[str, int]) -> tuple[int, ...]:
    """The per-device shape of an array with logical axis ``names`` (on shapes alone: no devices
    needed, e.g. to plan the memory of a mesh this machine does not have)."""
    return tuple(-(-size // math.prod(mesh_sizes[a] for a in axes)) for size, axes in zip(shape, mesh_axes(names)))
