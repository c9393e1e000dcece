"""Sequence classifiers on any family: a pretrained body, a pooling of its final hidden states, and
a new head (Howard & Ruder 2018, ULMFiT, section 3.3, for the pooling and the head).

Poolings, all over the real (unpadded) positions only:

- ``concat``: ``[final state, max-pool, mean-pool]``, 3 x hidden wide. The final state is the last
  real token for decoders (GPT, GPT-2: the only position that has seen the whole text) and the
  first position ([CLS]) for encoders.
- ``last``: the last real token's state; ``first``: the first position's; ``mean``: their mean.
- ``pooler``: the encoders' own ``[CLS]`` pooler (dense + tanh on the first position), from the
  pretrained weights when the checkpoint has them.

Heads: ``linear`` (dropout, linear) or ``ulmfit``: batch norm, dropout, linear (``hidden`` units),
ReLU, batch norm, dropout, linear. The batch norms keep running statistics in the
``batch_stats`` collection, which training updates and checkpoints with the parameters.

Inputs may be padded on the right or on the left, provided the real tokens of a row are one
contiguous run: each row is first rotated so its real tokens start at position 0, so position
ids, the causal mask and the encoders' [CLS] position are those of an unpadded input, and both
paddings give the same logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.layers import Dense
from models.registry import register_class

POOLINGS = ("concat", "last", "first", "mean", "pooler")
HEADS = ("linear", "ulmfit")


@dataclasses.dataclass(frozen=True)
class ClassifierHead:
    """What a classifier puts on a body: the pooling and the head (a run config's
    ``task.classifier``; the classes come from the data)."""

    pooling: str = "concat"
    head: str = "linear"
    hidden: int = 50  # width of the ULMFiT head's hidden layer (the paper's 50)
    dropout: float = 0.1  # before each linear layer of the head

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {POOLINGS}")
        if self.head not in HEADS:
            raise ValueError(f"unknown classifier head {self.head!r}; choose one of {HEADS}")
        if self.hidden < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"head hidden={self.hidden} must be >= 1 and dropout={self.dropout} in [0, 1)")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """A body config (``GPTConfig``, ``BertConfig``, ``AlbertConfig``), the class names, and the
    head (``ClassifierHead``'s fields). An encoder body's own heads are set from the pooling: its
    pooler when ``pooling`` is ``pooler``, none otherwise (no MLM or NSP/SOP head)."""

    body: Any
    labels: tuple[str, ...]
    pooling: str = "concat"
    head: str = "linear"
    hidden: int = 50
    dropout: float = 0.1

    family = "classifier"

    def __post_init__(self):
        labels = tuple(str(label) for label in self.labels)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"a classifier needs at least two distinct labels, got {list(self.labels)}")
        object.__setattr__(self, "labels", labels)
        self.head_config()
        if self.is_encoder:
            object.__setattr__(self, "body", dataclasses.replace(
                self.body, head="pooler" if self.pooling == "pooler" else "none"))
        elif self.pooling == "pooler":
            raise ValueError(
                f"pooling='pooler' is the encoders' [CLS] pooler; a {type(self.body).__name__} has none: "
                "use concat, last, first or mean"
            )

    @classmethod
    def on(cls, body, labels, head: ClassifierHead) -> "ClassifierConfig":
        """The classifier ``head`` puts on ``body`` for ``labels``."""
        return cls(body, labels, **dataclasses.asdict(head))

    def head_config(self) -> ClassifierHead:
        return ClassifierHead(self.pooling, self.head, self.hidden, self.dropout)

    @property
    def is_encoder(self) -> bool:
        return self.body.family in ("bert", "albert")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def head_depth(self) -> int:
        return self.body.head_depth

    def param_depths(self, params) -> dict:
        """The body's depths, and the head on top with the body's own heads (``head_depth``)."""
        return {"body": self.body.param_depths(params["body"]),
                "head": jax.tree.map(lambda _: np.int32(self.head_depth), params["head"])}

    def module(self, **kwargs) -> "SequenceClassifier":
        return SequenceClassifier(self, **kwargs)


register_class(ClassifierConfig)


def left_align(input_ids, attention_mask):
    """Rotate each row so its real tokens (one contiguous run) start at position 0."""
    length = input_ids.shape[1]
    first = jnp.argmax(attention_mask, axis=1)  # index of the first real token (0 for an empty row)
    index = (jnp.arange(length)[None, :] + first[:, None]) % length
    return jnp.take_along_axis(input_ids, index, 1), jnp.take_along_axis(attention_mask, index, 1)


def pool(hidden, mask, how: str, final: str):
    """Pool left-aligned hidden states [batch, length, width] over the real positions (``mask``).
    ``final`` is ``last`` or ``first``: which state ``concat`` starts with."""
    hidden = hidden.astype(jnp.float32)
    real = mask.astype(bool)[..., None]
    count = real.sum(1)
    states = {
        "first": hidden[:, 0],
        "last": jnp.take_along_axis(hidden, jnp.maximum(count - 1, 0)[:, :, None], 1)[:, 0],
        "mean": jnp.where(real, hidden, 0.0).sum(1) / jnp.maximum(count, 1),
    }
    if how != "concat":
        return states[how]
    maximum = jnp.where(count > 0, jnp.where(real, hidden, -jnp.inf).max(1), 0.0)
    return jnp.concatenate([states[final], maximum, states["mean"]], axis=-1)


class SequenceClassifier(nn.Module):
    """Body -> pooling -> head; returns class logits [batch, num_classes] in fp32."""

    config: ClassifierConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True):
        c = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        input_ids, attention_mask = left_align(input_ids, attention_mask)
        body = c.body.module(name="body")
        if c.is_encoder:
            out = body(input_ids, attention_mask=attention_mask, deterministic=deterministic)
            hidden = out["hidden"]
        else:
            hidden = body(input_ids, attention_mask=attention_mask, deterministic=deterministic, return_hidden=True)
        if c.pooling == "pooler":
            x = out["pooled"].astype(jnp.float32)
        else:
            x = pool(hidden, attention_mask, c.pooling, final="first" if c.is_encoder else "last")
        return Head(c.head, c.num_classes, c.hidden, c.dropout, c.body.initializer_range, name="head")(x, deterministic)


class Head(nn.Module):
    """``linear``: dropout, linear. ``ulmfit``: [batch norm, dropout, linear] twice, with a ReLU
    between. Its axes (``pooled``, ``head_hidden``, ``classes``) are in no sharding rule: the
    head is small and replicated."""

    kind: str
    num_classes: int
    hidden: int
    dropout: float
    init_std: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        widths = [self.num_classes] if self.kind == "linear" else [self.hidden, self.num_classes]
        axes = ("pooled", "head_hidden", "classes")[-len(widths) - 1:]
        for i, width in enumerate(widths):
            if self.kind == "ulmfit":
                # PyTorch's BatchNorm1d defaults (momentum 0.1 there is 0.9 here).
                x = nn.BatchNorm(use_running_average=deterministic, momentum=0.9, epsilon=1e-5, name=f"norm_{i}")(x)
            x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
            layer = Dense((width,), 1, (axes[i], axes[i + 1]), self.init_std, name=f"dense_{i}")
            x = layer(x)
            if i < len(widths) - 1:
                x = nn.relu(x)
        return x
