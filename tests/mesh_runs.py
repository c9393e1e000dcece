"""Training runs on several simulated CPU devices, for test_scale.py: a process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the device count is fixed when JAX
starts, so these run in subprocesses).

    python tests/mesh_runs.py check RUNS_JSON          # 8 devices: check placements, then train
    python tests/mesh_runs.py train RUNS_JSON          # train only
    python tests/mesh_runs.py process RUNS_JSON PORT I  # process I of 2 on localhost, then train

RUNS_JSON lists ``[name, run config (TrainConfig.to_dict), moved]`` triples; each is trained in
turn with ``train.loop.train`` and process 0 prints its summary. ``moved`` (or null) is
``{"from": RUN_DIR, "step": S}``: the run starts as a copy of RUN_DIR (trained earlier in the
list) with its checkpoints after step S removed, so it resumes from S on its own mesh.
``check`` first checks where the rules put every parameter, optimizer statistic and activation
on each mesh of ``MESHES``, and that meshes that do not fit fail before any data is tokenised
(the token cache, ``$JAXLM_CACHE/tokens``, is not written) and before anything compiles.
"""

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # conftest, and this checkout's packages

from conftest import lowerings  # noqa: E402

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


def _parts(config, mesh_shape):
    import optim
    from train import sharding
    from train.step import state_shardings

    module = config.model.module()
    mesh = sharding.make_mesh(mesh_shape)
    tx = optim.adamw(1e-3)
    return module, mesh, tx, state_shardings(module, tx, mesh)


def check_state_placements(config, mesh_shape, name):
    """Every parameter and both AdamW moments are placed as the rules say, and a few of them
    have the per-device shapes written out in SHARD_SHAPES."""
    import flax.linen as nn
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from train import sharding
    from train.step import boxed_param_shapes

    module, mesh, _, shardings = _parts(config, mesh_shape)
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


def check_compiled_activations(config):
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

    module, mesh, tx, shardings = _parts(config, MESHES["mixed"])
    params = models.param_shapes(module)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=jax.eval_shape(tx.init, params),
                        model_state={})
    state = jax.tree.map(lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), shapes, shardings)
    rows = (config.data.batch_size, config.data.seq_len)
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


def refused_before_compiling(config, message):
    """``config`` fails with ``message`` before its data is tokenised or anything compiles."""
    from train.data.downloads import cache_dir
    from train.loop import train

    with lowerings() as lowered:
        try:
            train(config)
        except ValueError as e:
            assert message in str(e), str(e)
        else:
            raise AssertionError(f"mesh {config.mesh} was accepted")
    assert not lowered, f"{len(lowered)} functions lowered before the error"
    assert not (cache_dir() / "tokens").exists(), "the data was tokenised before the error"
    assert not Path(config.run_dir).exists()


# fsdp: data=1 and fsdp=-1, all remaining devices (data is -1 by default).
MESHES = {"data": {"data": 8}, "fsdp": {"data": 1, "fsdp": -1}, "model": {"model": 8},
          "mixed": {"data": 2, "fsdp": 2, "model": 2}}


def check(runs):
    import jax

    assert jax.device_count() == 8
    config = runs[0][1]
    for name, shape in MESHES.items():
        check_state_placements(config, shape, name)
    check_compiled_activations(config)
    four_heads = config.replace({"model.n_head": 4, "mesh": {"model": 8}})
    refused_before_compiling(four_heads, "heads axis of size 4")
    refused_before_compiling(config.replace({"data.batch_size": 4, "mesh": {"data": 8}}),
                             "make data.batch_size / data.grad_accum a multiple of 8")
    refused_before_compiling(config.replace({"mesh": {"data": 16}}), "has 16 devices but 8 are available")
    train_all(runs)


def train_all(runs):
    import jax

    from train.loop import train

    for name, config, moved in runs:
        if moved and jax.process_index() == 0:
            shutil.copytree(moved["from"], config.run_dir)
            for step in Path(config.run_dir, "checkpoints").iterdir():
                if step.name.isdigit() and int(step.name) > moved["step"]:
                    shutil.rmtree(step)
        summary = train(config)
        if jax.process_index() == 0:
            print(name, json.dumps(summary), flush=True)


if __name__ == "__main__":
    mode, runs = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    if mode == "process":
        from train import distributed

        distributed.initialize(f"localhost:{sys.argv[3]}", 2, int(sys.argv[4]))
    from train.config import from_dict

    runs = [(name, from_dict(config), moved) for name, config, moved in runs]
    {"check": check, "train": train_all, "process": train_all}[mode](runs)
