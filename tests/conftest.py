"""Shared test fixtures: tiny reference models from transformers, saved as HF folders."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
