"""The optimizer section of a run config, and the one builder that turns it into optax.

``OptimizerConfig`` holds AdamW's settings, the schedule, ULMFiT's depth-wise methods and
gradual magnitude pruning; ``make_optimizer(config, steps, ...)`` chains them in the one order
every run uses (big_vision's ``optax.make(config)``). Depths arrive as data: this module knows
nothing of models.
"""

from __future__ import annotations

import dataclasses
import math

import optax

from optim.depths import discriminative_rates, freeze, gradual_unfreezing
from optim.optimizers import adamw
from optim.pruning import PruningConfig, magnitude_pruning
from optim.schedules import SCHEDULES, stlr

SCHEDULE_NAMES = (*SCHEDULES, "stlr")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup then decay (or STLR), global-norm clipping, the ULMFiT methods and pruning."""

    learning_rate: float = 3e-4  # the peak rate
    schedule: str = "cosine"  # cosine, linear, constant (after warmup_steps) or stlr
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1  # the rate at the last step, as a fraction of the peak (cosine, linear)
    # Slanted triangular rates (schedule="stlr", which warms up by itself: warmup_steps=0).
    stlr_cut_frac: float = 0.1
    stlr_ratio: float = 32.0
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    # ULMFiT's depth-wise methods (optim.depths): each group trains discriminative_factor times
    # slower than the one above it (2.6 in the paper, 1: off).
    discriminative_factor: float = 1.0
    # Gradual unfreezing: steps per stage, or "epoch"; 0: every group trains from the start.
    # unfreeze_stages caps the stages (default: one per group, the last unfreezing the rest).
    unfreeze_every: int | str = 0
    unfreeze_stages: int | None = None
    feature_extraction: bool = False  # only the top group (the heads) trains
    # Gradual magnitude pruning (Zhu & Gupta 2017); None: no pruning.
    pruning: PruningConfig | None = None

    def __post_init__(self):
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"optimizer.learning_rate={self.learning_rate} must be a positive number")
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(f"unknown optimizer.schedule {self.schedule!r}; choose one of {list(SCHEDULE_NAMES)}")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps={self.warmup_steps} must be at least 0")
        if self.schedule == "stlr" and self.warmup_steps:
            raise ValueError("optimizer.schedule=stlr rises over its first stlr_cut_frac of the steps by itself; "
                             f"set optimizer.warmup_steps=0 (it is {self.warmup_steps})")
        if not 0 <= self.end_lr_ratio <= 1:
            raise ValueError(f"optimizer.end_lr_ratio={self.end_lr_ratio} must lie in [0, 1]")
        if not self.weight_decay >= 0:
            raise ValueError(f"optimizer.weight_decay={self.weight_decay} must be at least 0")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optimizer.{name}={getattr(self, name)} must lie in [0, 1)")
        if not self.clip_norm > 0:
            raise ValueError(f"optimizer.clip_norm={self.clip_norm} must be positive")
        if not self.discriminative_factor > 0:
            raise ValueError(f"optimizer.discriminative_factor={self.discriminative_factor} must be positive "
                             "(2.6 in ULMFiT, 1: off)")
        every = self.unfreeze_every
        if not (every == "epoch" or (isinstance(every, int) and not isinstance(every, bool) and every >= 0)):
            raise ValueError(f"optimizer.unfreeze_every={every!r}: give a number of steps per stage (0: off) or 'epoch'")
        if self.unfreeze_stages is not None and not every:
            raise ValueError("optimizer.unfreeze_stages needs gradual unfreezing: set optimizer.unfreeze_every too")
        if self.unfreeze_stages is not None and self.unfreeze_stages < 1:
            raise ValueError(f"optimizer.unfreeze_stages={self.unfreeze_stages} must be at least 1")
        if self.feature_extraction and every:
            raise ValueError("optimizer.feature_extraction freezes all but the top group for the whole run; it cannot "
                             "be combined with gradual unfreezing (optimizer.unfreeze_every)")

    def check_steps(self, steps: int) -> None:
        """The rules that involve the run's length: the warmup, STLR's rise and the pruning window
        lie within ``steps``."""
        if self.warmup_steps > steps:
            raise ValueError(f"optimizer.warmup_steps={self.warmup_steps} exceeds the run's steps={steps}")
        if self.schedule == "stlr":
            stlr(steps, self.learning_rate, self.stlr_cut_frac, self.stlr_ratio)
        p = self.pruning
        if p is not None and p.end_step > steps:
            raise ValueError(f"optimizer.pruning ends at step {p.end_step}, after the run's last step ({steps}): the "
                             f"target sparsity {p.target_sparsity} would never be reached; set "
                             f"optimizer.pruning.end_step at most {steps}")

    @property
    def needs_depths(self) -> bool:
        """Whether the depth-wise methods are on (they need each parameter's depth)."""
        return self.discriminative_factor != 1 or bool(self.unfreeze_every) or self.feature_extraction


def make_schedule(config: OptimizerConfig, steps: int) -> optax.Schedule:
    if config.schedule == "stlr":
        return stlr(steps, config.learning_rate, config.stlr_cut_frac, config.stlr_ratio)
    return SCHEDULES[config.schedule](config.learning_rate, config.warmup_steps, steps, config.end_lr_ratio)


def make_optimizer(config: OptimizerConfig, steps: int, depths=None, steps_per_epoch: int | None = None,
                   stacked: str | None = None):
    """AdamW on the schedule, then the depth-wise methods the config asks for, then magnitude
    pruning -> ``(optimizer, schedule)``.

    ``depths``: each parameter's depth (``models.param_depths``), needed when
    ``config.needs_depths``. ``steps_per_epoch`` serves ``unfreeze_every='epoch'``. ``stacked``:
    a regex of the parameter paths with a leading layers axis (scanned layers), for pruning.
    """
    config.check_steps(steps)
    schedule = make_schedule(config, steps)
    tx = adamw(schedule, weight_decay=config.weight_decay, b1=config.b1, b2=config.b2, clip_norm=config.clip_norm)
    if config.needs_depths:
        if depths is None:
            raise ValueError("the depth-wise methods (discriminative_factor, unfreeze_every, feature_extraction) "
                             "need each parameter's depth: pass depths")
        if config.discriminative_factor != 1:
            tx = optax.chain(tx, discriminative_rates(depths, config.discriminative_factor))
        if config.feature_extraction:
            tx = freeze(tx, depths)
        elif config.unfreeze_every:
            every = config.unfreeze_every
            if every == "epoch":
                if steps_per_epoch is None:
                    raise ValueError("optimizer.unfreeze_every='epoch' needs data with a known epoch length (not "
                                     "streamed); give a number of steps")
                every = steps_per_epoch
            tx = gradual_unfreezing(tx, depths, every, config.unfreeze_stages)
    if config.pruning is not None:  # last in the chain: it zeroes the final updates of the masked weights
        tx = optax.chain(tx, magnitude_pruning(config.pruning, stacked=stacked))
    return tx, schedule
