"""What every train-step contender shares: the spec of the measurement and its batch.

Imports only numpy (and optax, lazily), so the reference workers, which run in other processes
and other virtual environments, never import our packages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class BenchSpec:
    """What to measure. The optimizer is ``optim.OptimizerConfig``'s defaults (warmup then cosine
    decay over ``total_steps``); the references receive its fields by name (``optimizer`` in the
    workers' payload), since they do not import our packages."""

    model: Any = "gpt2"  # a preset name or a model config
    seq_len: int = 256
    batch_size: int = 2
    dtype: str = "float32"
    steps: int = 5
    warmup: int = 1
    dropout: str = "off"  # "off": all dropout rates 0 (in every contender); "on": the preset's rates
    model_overrides: dict = dataclasses.field(default_factory=dict)
    total_steps: int = 1000  # the learning-rate schedule's length
    seed: int = 0

    def __post_init__(self):
        if self.dropout not in ("off", "on"):
            raise ValueError(f"dropout={self.dropout!r}; choose 'off' or 'on'")
        for name in ("seq_len", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be at least 0")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def random_tokens(spec: BenchSpec, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets, int32 ``[batch, seq]``, from one random block per row."""
    block = np.random.default_rng(spec.seed).integers(0, vocab_size, (spec.batch_size, spec.seq_len + 1))
    block = block.astype(np.int32)
    return np.ascontiguousarray(block[:, :-1]), np.ascontiguousarray(block[:, 1:])


EPS = 1e-8  # Adam's epsilon: optim.adamw's default


def warmup_cosine_fn(optimizer: dict, total_steps: int):
    """The learning-rate schedule of ``optim.warmup_cosine`` as an optax schedule (reference side);
    ``optimizer``: ``optim.OptimizerConfig``'s fields."""
    import optax

    peak = optimizer["learning_rate"]
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, optimizer["warmup_steps"], max(total_steps, 1), peak * optimizer["end_lr_ratio"]
    )
