"""Learning-rate schedules: linear warmup then cosine, linear or constant; and ULMFiT's slanted
triangular rates (STLR)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def _check(warmup_steps: int, total_steps: int) -> None:
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]")


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, end_ratio: float = 0.1) -> optax.Schedule:
    """0 -> ``peak_lr`` linearly over ``warmup_steps``, then a half cosine to ``end_ratio * peak_lr``."""
    _check(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, max(total_steps, 1), peak_lr * end_ratio)


def warmup_linear(peak_lr: float, warmup_steps: int, total_steps: int, end_ratio: float = 0.0) -> optax.Schedule:
    """0 -> ``peak_lr`` linearly over ``warmup_steps``, then linearly to ``end_ratio * peak_lr``."""
    _check(warmup_steps, total_steps)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_lr, warmup_steps),
         optax.linear_schedule(peak_lr, peak_lr * end_ratio, max(total_steps - warmup_steps, 1))],
        [warmup_steps],
    )


def warmup_constant(peak_lr: float, warmup_steps: int, total_steps: int, end_ratio: float = 1.0) -> optax.Schedule:
    """0 -> ``peak_lr`` linearly over ``warmup_steps``, then constant (``end_ratio`` is unused)."""
    del end_ratio
    _check(warmup_steps, total_steps)
    return optax.linear_schedule(0.0 if warmup_steps else peak_lr, peak_lr, warmup_steps)


def stlr(total_steps: int, peak_value: float, cut_frac: float = 0.1, ratio: float = 32) -> optax.Schedule:
    """Slanted triangular learning rates (Howard & Ruder 2018, equation 3).

    A short linear increase over the first ``cut = floor(T * cut_frac)`` steps, then a long linear
    decay, from ``peak_value / ratio`` to ``peak_value`` and back::

        p  = t / cut                                      if t < cut
             1 - (t - cut) / (cut * (1 / cut_frac - 1))   otherwise
        lr = peak_value * (1 + p * (ratio - 1)) / ratio

    ``t`` is the update count, 0-based, and may be traced (the schedule is jit-safe). Where the
    floor in ``cut`` makes the decay reach p = 0 before step T, p stays at 0 (lr =
    ``peak_value / ratio``) instead of going on below it, and so does any step past T.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"STLR needs total_steps >= 1, got {total_steps!r}")
    if not 0 < cut_frac < 1:
        raise ValueError(f"STLR's cut_frac={cut_frac} must lie strictly between 0 and 1 (the paper uses 0.1)")
    if not ratio >= 1:
        raise ValueError(f"STLR's ratio={ratio} must be at least 1 (lowest rate = peak / ratio; the paper uses 32)")
    cut = math.floor(total_steps * cut_frac)
    if cut < 1:
        raise ValueError(
            f"STLR: cut = floor(total_steps * cut_frac) = floor({total_steps} * {cut_frac}) = 0 steps of increase; "
            f"raise total_steps to at least {math.ceil(1 / cut_frac)} or cut_frac to at least {1 / total_steps:.3g}"
        )
    decay_steps = cut * (1 / cut_frac - 1)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        p = jnp.where(t < cut, t / cut, 1 - (t - cut) / decay_steps)
        return peak_value * (1 + jnp.maximum(p, 0.0) * (ratio - 1)) / ratio

    return schedule


# Schedules taking (peak_lr, warmup_steps, total_steps, end_ratio); STLR has its own parameters.
SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear, "constant": warmup_constant}
