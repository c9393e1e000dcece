"""optax pieces for training and fine-tuning: schedules, parameter groups, optimizers, and the
depth-wise methods of ULMFiT (discriminative rates, freezing, gradual unfreezing).

Pure functions of pytrees; nothing here knows about models or the training loop.
"""

from optim.config import OptimizerConfig, make_optimizer, make_schedule
from optim.depths import NEVER, discriminative_rates, freeze, gradual_unfreezing, train_from_step
from optim.groups import check_depths, param_paths, path_mask, per_slice
from optim.optimizers import adamw, clip_by_global_norm, decay_mask, scale_by_adam
from optim.pruning import PruningConfig, magnitude_pruning, sparsity_report
from optim.schedules import SCHEDULES, stlr, warmup_constant, warmup_cosine, warmup_linear

__all__ = [
    "NEVER", "SCHEDULES", "OptimizerConfig", "PruningConfig", "adamw", "check_depths", "clip_by_global_norm", "decay_mask",
    "discriminative_rates", "freeze", "gradual_unfreezing", "magnitude_pruning", "make_optimizer", "make_schedule", "param_paths", "path_mask",
    "per_slice", "scale_by_adam", "sparsity_report", "stlr", "train_from_step", "warmup_constant", "warmup_cosine",
    "warmup_linear",
]
