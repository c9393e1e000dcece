"""Shared test fixtures: tiny reference models from transformers, saved as HF folders."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import random

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
