"""optax pieces for training and fine-tuning: schedules, parameter groups, optimizers.

Pure functions of pytrees; nothing here knows about models or the training loop.
"""

from optim.groups import path_mask
from optim.optimizers import adamw, clip_by_global_norm, decay_mask
from optim.pruning import PruningConfig, magnitude_pruning, sparsity_report
from optim.schedules import SCHEDULES, warmup_cosine, warmup_linear

__all__ = [
    "adamw", "clip_by_global_norm", "decay_mask", "path_mask", "warmup_cosine", "warmup_linear", "SCHEDULES",
    "PruningConfig", "magnitude_pruning", "sparsity_report",
]
