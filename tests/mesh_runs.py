"""Training runs on several simulated CPU devices, for test_scale.py: a process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the device count is fixed when JAX
starts, so these run in subprocesses).

    python tests/mesh_runs.py check RUNS_JSON          # 8 devices: check placements, then train
    python tests/mesh_runs.py train RUNS_JSON          # train only
    python tests/mesh_runs.py process RUNS_JSON PORT I  # process I of 2 on localhost, then train

RUNS_JSON lists ``[name, config fields]`` pairs; each is trained in turn with ``train.loop.train``
and process 0 prints its summary. ``check`` first checks where the rules put every parameter,
optimizer statistic and activation on each mesh of ``MESHES``, and that meshes that do not fit
fail before anything compiles.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # conftest, and this checkout's packages

from conftest import lowerings  # noqa: E402


def config(fields):
    from train.config import TrainConfig

    return TrainConfig(**fields)


# Per-device shapes of a few parameters of gpt2-tiny with 8 heads (width 32, MLP 128, vocabulary
# 256, 32 positions), written out by hand from the rules, on each 8-device mesh.
SHARD_SHAPES = {
    "data": {"blocks_0/mlp/fc/kernel": (32, 128), "wte/embedding": (256, 32), "blocks_0/attn/query/kernel": (32, 8, 4),
             "blocks_0/attn/out/kernel": (8, 4, 32), "wpe/embedding": (32, 32), "ln_f/scale": (32,)},
    "fsdp": {"blocks_0/mlp/fc/kernel": (4, 128), "wte/embedding": (256, 4), "blocks_0/attn/query/kernel": (4, 8, 4),
             "blocks_0/attn/out/kernel": (8, 4, 4), "wpe/embedding": (32, 4), "ln_f/scale": (4,)},
    "model": {"blocks_0/mlp/fc/kernel": (32, 16), "wte/embedding": (32, 32), "blocks_0/attn/query/kernel": (32, 1, 4),
              "blocks_0/attn/out/kernel": (1, 4, 32), "wpe/embedding": (32, 32), "ln_f/scale": (32,)},
    "mixed": {"blocks_0/mlp/fc/kernel": (16, 64), "wte/embedding": (128, 16), "blocks_0/attn/query/kernel": (16, 4, 4),
              "blocks_0/attn/out/kernel": (4, 4, 16), "wpe/embedding": (32, 16), "ln_f/scale": (16,)},
}


def _parts(fields, mesh_shape):
    import models
    import optim
    from train import sharding
    from train.step import state_shardings

    module, _ = models.create(fields["model"], **fields["model_overrides"])
    mesh = sharding.make_mesh(mesh_shape)
    tx = optim.adamw(1e-3)
    return module, mesh, tx, state_shardings(module, tx, mesh)


def check_state_placements(fields, mesh_shape, name):
    """Every parameter and both AdamW moments are placed as the rules say, and a few of them
    have the per-device shapes written out in SHARD_SHAPES."""
    import flax.linen as nn
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from train import sharding
    from train.step import boxed_param_shapes

    module, mesh, _, shardings = _parts(fields, mesh_shape)
    boxed = boxed_param_shapes(module)
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    expected = jax.tree.map(lambda b: NamedSharding(mesh, P(*nn.logical_to_mesh_axes(b.names, sharding.RULES))),
                            boxed, is_leaf=is_box)
    shapes = jax.tree.map(lambda b: b.value.shape, boxed, is_leaf=is_box)
    adam = shardings.opt_state[1][0]  # chain(clip, adamw) -> adamw's (ScaleByAdamState, ...)
    for kind, tree in (("params", shardings.params), ("mu", adam.mu), ("nu", adam.nu)):
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(expected)):
            assert got == want, (mesh_shape, kind, path, got, want)
        per_device = {"/".join(k.key for k in path): got.shard_shape(shape) for (path, got), shape in
                      zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))}
        for param, shard in SHARD_SHAPES[name].items():
            assert per_device[param] == shard, (mesh_shape, kind, param, per_device[param], shard)


def check_compiled_activations(fields):
    """On the 2 x 2 x 2 mesh: the train step, as lowered for XLA, constrains every hidden state
    and MLP activation as the rules say; in the compiled forward pass (the same model code under
    the same rules) the activations are placed by the rules, which without them XLA places
    otherwise."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import models
    from train import sharding
    from train.step import TrainState, make_train_step
    from train.tasks import LanguageModeling

    module, mesh, tx, shardings = _parts(fields, {"data": 2, "fsdp": 2, "model": 2})
    params = models.param_shapes(module)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=jax.eval_shape(tx.init, params),
                        model_state={})
    state = jax.tree.map(lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), shapes, shardings)
    rows = (fields["batch_size"], fields["seq_len"])
    ids = jax.ShapeDtypeStruct(rows, jnp.int32, sharding=sharding.batch_sharding(mesh))
    batch = {k: jax.ShapeDtypeStruct((1, *rows), jnp.int32, sharding=sharding.batch_sharding(mesh, leading=1))
             for k in ("inputs", "targets")}
    lowered = make_train_step(module, LanguageModeling, tx, jax.random.PRNGKey(1), shardings, mesh, 1).lower(state, batch)
    constraints = [line for line in lowered.as_text().splitlines() if "sdy.sharding_constraint" in line]
    n_layer, width, mlp = module.config.n_layer, module.config.d_model, module.config.d_ff
    hidden = [c for c in constraints if c.endswith(f"x{width}xf32>")]
    inner = [c for c in constraints if c.endswith(f"x{mlp}xf32>")]
    assert len(hidden) >= n_layer + 1 and len(inner) >= n_layer, constraints
    assert all('[{"data", "fsdp"}, {}, {}]' in c for c in hidden), hidden
    assert all('[{"data", "fsdp"}, {}, {"model"}]' in c for c in inner), inner

    def forward(params, ids):
        return module.apply({"params": params}, ids, capture_intermediates=True, return_hidden=True)[1]

    for rules in (True, False):
        fn = sharding.with_axis_rules(forward, mesh) if rules else forward
        out = jax.jit(fn, in_shardings=(shardings.params, ids.sharding)).lower(state.params, ids).compile()
        placed = out.output_shardings["intermediates"]
        block, fc = placed["blocks_0"]["__call__"][0][0], placed["blocks_0"]["mlp"]["fc"]["__call__"][0]
        by_rules = (block.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, None)), 3)
                    and fc.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, "model")), 3))
        assert by_rules == rules, (rules, block, fc)


def refused_before_compiling(fields, mesh_shape, message):
    from train.loop import train

    with lowerings() as lowered:
        try:
            train(config({**fields, "mesh": mesh_shape}))
        except ValueError as e:
            assert message in str(e), str(e)
        else:
            raise AssertionError(f"mesh {mesh_shape} was accepted")
    assert not lowered, f"{len(lowered)} functions lowered before the error"


MESHES = {"data": {"data": 8}, "fsdp": {"fsdp": 8}, "model": {"model": 8},
          "mixed": {"data": 2, "fsdp": 2, "model": 2}}


def check(runs):
    import jax

    assert jax.device_count() == 8
    fields = runs[0][1]
    for name, shape in MESHES.items():
        check_state_placements(fields, shape, name)
    check_compiled_activations(fields)
    four_heads = {**fields, "model_overrides": {**fields["model_overrides"], "n_head": 4}}
    refused_before_compiling(four_heads, {"model": 8}, "heads axis of size 4")
    refused_before_compiling({**fields, "batch_size": 4}, {"data": 8}, "make batch_size / grad_accum a multiple of 8")
    train_all(runs)


def train_all(runs):
    import jax

    from train.loop import train

    for name, run in runs:
        summary = train(config(run))
        if jax.process_index() == 0:
            print(name, json.dumps(summary), flush=True)


if __name__ == "__main__":
    mode, runs = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    if mode == "process":
        from train import distributed

        distributed.initialize(f"localhost:{sys.argv[3]}", 2, int(sys.argv[4]))
    {"check": check, "train": train_all, "process": train_all}[mode](runs)
