"""Every task a run can name: the data tasks of ``train.tasks`` and distillation, which wraps one
of them (``train.distill``). Kept apart from both so neither imports the other's registry."""

from __future__ import annotations

from train.distill import Distillation
from train.tasks import TASKS

ALL_TASKS = {**TASKS, "distill": Distillation}


def make_task(config, tokenizer, tokenizer_key: str):
    """The task object of ``config.task.name``."""
    return ALL_TASKS[config.task.name](config, tokenizer, tokenizer_key)
