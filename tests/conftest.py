"""Shared test fixtures and tiny configs: a small corpus with its sentencepiece model, a tiny training run."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One persistent XLA compilation cache for the session and the processes its tests start: many
# tests compile the same tiny train and eval steps (new closures, the same HLO), which then
# compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache",
                                                                "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The tests' models are tiny: XLA's LLVM code generation at full optimisation takes most of their
# time (a test file of test_gpt's kind: 70 s against 27 s at level 0) and buys nothing at these
# sizes. The HLO passes, which decide what is computed, are the same.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import contextlib
import json
import random
import socket

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.RandomState(0)


def torch_logits(model, ids, mask=None):
    import torch

    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids), **kwargs).logits.numpy()


WORDS = "the union state nation people congress year government war peace law trade money work".split()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small JSONL corpus and a 120-piece sentencepiece model trained on it."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for split, n in (("train", 60), ("validation", 6)):
        with open(root / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                text = ". ".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(rng.randint(3, 8)))
                f.write(json.dumps({"text": text + "."}) + "\n")
    from train.data.tokenizers import train_sentencepiece

    model = train_sentencepiece([str(root / "train.jsonl")], root / "spm", vocab_size=120, model_type="bpe")
    return root, model


@pytest.fixture(scope="session")
def labelled_data(tmp_path_factory):
    """Train, validation and test rows whose label (field ``topic``) is which of two words, war or
    peace, they repeat: learnable in a few steps."""
    root = tmp_path_factory.mktemp("labelled")
    rng = random.Random(0)
    words = [w for w in WORDS if w not in ("war", "peace")]
    for split, n in (("train", 48), ("validation", 12), ("test", 12)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(n):
                label = ("war", "peace")[i % 2]
                text = rng.choices(words, k=rng.randint(4, 14)) + [label] * 2
                rng.shuffle(text)
                f.write(json.dumps({"text": " ".join(text), "topic": label}) + "\n")
    return root


def tiny_config(corpus, run_dir, **changes):
    """A TrainConfig that trains ``gpt2-tiny`` (32-token context) for 12 steps on the ``corpus``
    fixture in a few seconds; ``changes`` (dotted paths: ``**{"task.name": "mlm"}``) change it."""
    import models
    from train.config import DataConfig, TrainConfig

    root, model = corpus
    base = TrainConfig(model=models.get_config("gpt2-tiny", n_positions=32),
                       data=DataConfig(seq_len=32, batch_size=4))
    return base.replace({
        "data.train": str(root / "train.jsonl"), "data.eval": str(root / "validation.jsonl"),
        "data.tokenizer": str(model), "steps": 12, "optimizer.warmup_steps": 2, "optimizer.learning_rate": 3e-3,
        "log.every": 2, "log.eval_every": 6, "checkpoint.every": 4, "run_dir": str(run_dir),
        "log.progress_bar": False, **changes,
    })


def config_file(path, config):
    """A ``--config`` file whose ``get_config()`` returns ``config``."""
    text = json.dumps(config.to_dict())
    path.write_text(f"import json\n\nfrom train.config import from_dict\n\n\ndef get_config():\n"
                    f"    return from_dict(json.loads({text!r}))\n")
    return path


def damage_arrays(step_dir):
    """Garbage in the array data of a checkpoint step's parameters: TensorStore cannot read them."""
    for f in (step_dir / "params").glob("ocdbt.process_*/d/*"):
        f.write_bytes(b"garbage")


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lowerings():
    """The jitted functions lowered or compiled for XLA inside the block (a list of durations
    that fills as they happen): empty means nothing reached XLA."""
    import jax

    seen = []
    events = ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration")

    def listener(event, duration, **_):
        if event in events:
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def jaxlm(*argv):
    """Run ``jaxlm ARGV`` in this process (its result; a refusal exits with status 2)."""
    from jaxlm.cli import run

    return run([str(a) for a in argv])
