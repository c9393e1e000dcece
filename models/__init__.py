"""Flax Linen transformer language models: GPT, GPT-2 (``models.gpt``), BERT (``models.bert``),
ALBERT (``models.albert``).

Parameters live outside the modules. The public entry points:

    module, config = models.create("gpt2", dtype="bfloat16")
    params = models.init_params(module, jax.random.key(0))
    logits = module.apply({"params": params}, input_ids)

The encoders return a dict (``hidden``, and ``pooled``/``mlm_logits``/``nsp_logits`` or
``sop_logits`` as their ``head`` says).

``models.classifier`` puts a pooling and a classifier head on any of them
(``ClassifierConfig(body_config, labels, pooling=..., head=...)``); ``param_depths`` says which
depth each parameter belongs to, for the depth-wise fine-tuning methods of ``optim``.

``models.hf`` converts to and from Hugging Face checkpoints.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import albert, bert, gpt  # noqa: F401  (register the presets)
from models.albert import ALBERT, AlbertConfig
from models.bert import BERT, BertConfig
from models.classifier import ClassifierConfig, ClassifierHead, SequenceClassifier
from models.config import TransformerConfig
from models.gpt import GPT, GPTConfig
from models.registry import PRESETS, config_from_dict, config_to_dict, get_config

__all__ = [
    "ALBERT", "AlbertConfig", "BERT", "BertConfig", "ClassifierConfig", "ClassifierHead", "GPT", "GPTConfig", "PRESETS",
    "SequenceClassifier", "config_from_dict", "config_to_dict", "count_params", "create", "get_config",
    "init_params", "init_variables", "param_depths", "param_shapes", "TransformerConfig",
]


def create(name_or_config, **overrides):
    """A preset name (see ``PRESETS``) or config, with overrides -> ``(module, config)``."""
    config = get_config(name_or_config, **overrides)
    return config.module(), config


def init_variables(module, rng) -> dict:
    """Randomly initialised variables: ``params`` and any other collections (a classifier head's
    ``batch_stats``), as plain arrays (logical-axis boxes removed)."""
    return nn.unbox(jax.jit(module.init)(rng, jnp.zeros((1, 1), jnp.int32)))


def init_params(module, rng) -> dict:
    """Randomly initialised parameters, as plain arrays (logical-axis boxes removed)."""
    return init_variables(module, rng)["params"]


def param_depths(config, params) -> dict:
    """Which depth each parameter belongs to, for the depth-wise methods of ``optim``: a pytree
    like ``params`` (or their shapes) of numpy int32 arrays, 0 for the embeddings, then each
    layer in order, the heads highest; a stacked (``scan_layers``) array gets one depth per
    layer slice. Each family documents its grouping (``GPTConfig.param_depths``, ...)."""
    return config.param_depths(params)


def param_shapes(module) -> dict:
    """Parameter shapes and dtypes, computed without allocating (``jax.eval_shape``)."""
    return jax.eval_shape(lambda: init_params(module, jax.random.key(0)))


def count_params(params_or_module) -> int:
    """Number of parameters of a parameter tree, or of a module from its shapes alone."""
    tree = param_shapes(params_or_module) if isinstance(params_or_module, nn.Module) else params_or_module
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
