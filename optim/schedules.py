"""Learning-rate schedules: linear warmup, then cosine or linear decay."""

from __future__ import annotations

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


SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear}
