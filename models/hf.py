"""Hugging Face checkpoints in and out: ``load_pretrained``, ``to_hf_state_dict``, ``save_pretrained``.

A checkpoint folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``,
either possibly sharded with an ``.index.json``). Safetensors files are parsed directly (no
torch needed); ``.bin`` files are read by an unpickler that accepts only tensors, storages and
ordered dicts, so a checkpoint can never run code on load.

Each family's converter maps between the transformers names and our parameter tree; the
mapping of one layer is written out once and used in both directions.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import safetensors.numpy

import jax.numpy as jnp

import models
from models.gpt import GPTConfig
from models.layers import HF_ACTIVATIONS, stack_layers, unstack_layers

# --------------------------------------------------------------------------------------------
# Reading tensors


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Parse a .safetensors file: 8-byte header length, JSON header, raw little-endian data."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path} is not a safetensors file (only {len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a safetensors file (bad header: {e})") from None
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
        out[name] = array.reshape(info["shape"]).copy()
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
        self.problems: list[str] = []

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        self.used.add(name)
        if name not in self.state:
            self.problems.append(f"missing {name} (expected shape {shape})")
            return np.zeros(shape, np.float32)
        value = self.state[name]
        if tuple(value.shape) != tuple(shape):
            self.problems.append(f"{name} has shape {tuple(value.shape)}, expected {shape}")
            return np.zeros(shape, np.float32)
        return np.asarray(value, np.float32)

    def finish(self, where: str, ignorable: tuple[str, ...] = ()):
        if self.problems:
            raise ValueError(f"{where} does not fit the model its config.json describes:\n  " + "\n  ".join(self.problems))
        unused = [k for k in self.state if k not in self.used and not any(s in k for s in ignorable)]
        if unused:
            warnings.warn(f"{where}: ignoring {len(unused)} tensors the model does not use: {unused[:6]}")


class GPTConverter:
    """transformers ``GPT2LMHeadModel``/``GPT2Model`` and ``OpenAIGPTLMHeadModel``/``OpenAIGPTModel``.

    HF stores the attention's query/key/value as one Conv1D (``c_attn``, [d, 3d]) and every
    projection as [in, out]; ours are per-head ``[d, heads, head_dim]`` kernels.
    """

    model_types = ("gpt2", "openai-gpt")

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
            activation=HF_ACTIVATIONS[act],
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            embd_dropout=hf.get("embd_pdrop", 0.1),
            attn_dropout=hf.get("attn_pdrop", 0.1),
            resid_dropout=hf.get("resid_pdrop", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            scale_residual_init=gpt2,
            **overrides,
        )

    @staticmethod
    def config_to_hf(c: GPTConfig) -> dict:
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[c.activation]
        common = dict(
            vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.d_model, n_layer=c.n_layer,
            n_head=c.n_head, layer_norm_epsilon=c.layer_norm_eps, embd_pdrop=c.embd_dropout,
            attn_pdrop=c.attn_dropout, resid_pdrop=c.resid_dropout, initializer_range=c.initializer_range,
            tie_word_embeddings=True,
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

    @staticmethod
    def _layer_names(c: GPTConfig) -> dict[str, str]:
        return {"wte": "wte" if c.pre_ln else "tokens_embed", "wpe": "wpe" if c.pre_ln else "positions_embed"}

    @classmethod
    def from_hf(cls, c: GPTConfig, state: dict, where: str = "checkpoint") -> dict:
        t = _Tensors(state, prefixes=("transformer.",))
        d, f, h, hd = c.d_model, c.d_ff, c.n_head, c.head_dim
        names = cls._layer_names(c)
        params = {
            "wte": {"embedding": t(f"{names['wte']}.weight", (c.vocab_size, d))},
            "wpe": {"embedding": t(f"{names['wpe']}.weight", (c.n_positions, d))},
        }
        blocks = []
        for i in range(c.n_layer):
            p = f"h.{i}."
            qkv_w = t(p + "attn.c_attn.weight", (d, 3 * d))
            qkv_b = t(p + "attn.c_attn.bias", (3 * d,))
            attn = {
                name: {"kernel": w.reshape(d, h, hd), "bias": b.reshape(h, hd)}
                for name, w, b in zip(("query", "key", "value"), np.split(qkv_w, 3, axis=1), np.split(qkv_b, 3))
            }
            attn["out"] = {"kernel": t(p + "attn.c_proj.weight", (d, d)).reshape(h, hd, d),
                           "bias": t(p + "attn.c_proj.bias", (d,))}
            blocks.append({
                "ln_1": {"scale": t(p + "ln_1.weight", (d,)), "bias": t(p + "ln_1.bias", (d,))},
                "attn": attn,
                "ln_2": {"scale": t(p + "ln_2.weight", (d,)), "bias": t(p + "ln_2.bias", (d,))},
                "mlp": {
                    "fc": {"kernel": t(p + "mlp.c_fc.weight", (d, f)), "bias": t(p + "mlp.c_fc.bias", (f,))},
                    "proj": {"kernel": t(p + "mlp.c_proj.weight", (f, d)), "bias": t(p + "mlp.c_proj.bias", (d,))},
                },
            })
        params.update(stack_layers(blocks, c.scan_layers, "blocks"))
        if c.pre_ln:
            params["ln_f"] = {"scale": t("ln_f.weight", (d,)), "bias": t("ln_f.bias", (d,))}
        # lm_head.weight is tied to the token embedding; the attention masks are buffers.
        t.finish(where, ignorable=("lm_head.weight", "attn.bias", "attn.masked_bias", "position_ids"))
        return params

    @classmethod
    def to_hf(cls, c: GPTConfig, params: dict) -> dict[str, np.ndarray]:
        names = cls._layer_names(c)
        out = {
            f"transformer.{names['wte']}.weight": params["wte"]["embedding"],
            f"transformer.{names['wpe']}.weight": params["wpe"]["embedding"],
        }
        d = c.d_model
        for i, b in enumerate(unstack_layers(params, c.n_layer, c.scan_layers, "blocks")):
            p = f"transformer.h.{i}."
            a = b["attn"]
            out[p + "attn.c_attn.weight"] = np.concatenate(
                [np.reshape(a[n]["kernel"], (d, d)) for n in ("query", "key", "value")], axis=1
            )
            out[p + "attn.c_attn.bias"] = np.concatenate([np.reshape(a[n]["bias"], (d,)) for n in ("query", "key", "value")])
            out[p + "attn.c_proj.weight"] = np.reshape(a["out"]["kernel"], (d, d))
            out[p + "attn.c_proj.bias"] = a["out"]["bias"]
            for ln in ("ln_1", "ln_2"):
                out[p + f"{ln}.weight"] = b[ln]["scale"]
                out[p + f"{ln}.bias"] = b[ln]["bias"]
            for name in ("fc", "proj"):
                out[p + f"mlp.c_{name}.weight"] = b["mlp"][name]["kernel"]
                out[p + f"mlp.c_{name}.bias"] = b["mlp"][name]["bias"]
        if c.pre_ln:
            out["transformer.ln_f.weight"] = params["ln_f"]["scale"]
            out["transformer.ln_f.bias"] = params["ln_f"]["bias"]
        return out


CONVERTERS = {GPTConfig: GPTConverter}
_BY_MODEL_TYPE = {t: conv for conv in CONVERTERS.values() for t in conv.model_types}


def _converter(config):
    try:
        return CONVERTERS[type(config)]
    except KeyError:
        raise TypeError(f"no Hugging Face converter for {type(config).__name__}") from None


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


def load_pretrained(path, **overrides):
    """An HF folder -> ``(module, config, params)``. ``overrides`` replace config fields that do
    not change the parameters (``dtype``, ``scan_layers``, ``remat``, dropout rates)."""
    path = Path(path)
    hf = read_hf_config(path)
    converter = _BY_MODEL_TYPE[hf["model_type"]]
    config = converter.config_from_hf(hf, **overrides)
    if overrides and models.count_params(config.module()) != models.count_params(converter.config_from_hf(hf).module()):
        raise ValueError(f"overrides {sorted(overrides)} change the parameter shapes; the checkpoint fixes those")
    params = converter.from_hf(config, read_state_dict(path), where=str(path))
    params = jax.tree.map(lambda x: np.asarray(x, jnp.dtype(config.param_dtype)), params)
    return config.module(), config, params


def to_hf_state_dict(config, params) -> dict[str, np.ndarray]:
    """Our parameters -> transformers' state dict (float32 numpy arrays, transformers' names)."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    return {k: np.ascontiguousarray(v) for k, v in _converter(config).to_hf(config, params).items()}


def to_hf_config(config) -> dict:
    return _converter(config).config_to_hf(config)


def save_pretrained(folder, config, params, overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' ``from_pretrained`` loads.

    The folder is assembled next to its destination and renamed into place, so a failure leaves
    nothing half-written; an existing non-empty folder is kept unless ``overwrite``.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; choose another folder or pass overwrite=True")
    hf_config = to_hf_config(config)
    state = to_hf_state_dict(config, params)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        safetensors.numpy.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
