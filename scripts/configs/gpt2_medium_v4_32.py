"""GPT-2 medium (355M) pretraining on a TPU v4-32 pod slice (16 chips, 4 hosts), the README's
worked example: ``scripts/launch_tpu_pod.sh train`` runs it on every host.

Data and tokenizer paths come from the environment (the same path on every host): ``DATA``, a
text/JSONL corpus or a hub dataset read as a stream, and ``TOKENIZER``, GPT-2's BPE files
(``vocab.json`` + ``merges.txt``). The run folder, ``RUN``, must be on a filesystem every host
mounts (each host writes its own shards of every checkpoint).
"""

import os

import models
from train.config import TrainConfig


def get_config() -> TrainConfig:
    model = models.get_config("gpt2-medium", dtype="bfloat16").without_dropout()
    return TrainConfig(model=model).replace({
        "data.train": os.environ.get("DATA", "/mnt/shared/openwebtext/train.jsonl"),
        "data.tokenizer": os.environ.get("TOKENIZER", "/mnt/shared/gpt2-tokenizer"),
        "data.streaming": True,
        "data.seq_len": 1024,
        "data.batch_size": 512,  # 0.5M tokens per step: 32 rows per chip
        "data.grad_accum": 8,  # microbatches of 4 rows per chip: 24.5 GiB of the 32 (jaxlm benchmark --mode memory)
        "mesh": {"data": 4, "fsdp": 4, "model": 1},  # fsdp within each host's 4 chips, data across hosts
        "steps": 100_000,
        "optimizer.learning_rate": 3e-4,
        "optimizer.warmup_steps": 2_000,
        "optimizer.weight_decay": 0.1,
        "log.every": 50,
        "log.eval_every": 2_000,
        "checkpoint.every": 1_000,
        "run_dir": os.environ.get("RUN", "/mnt/shared/runs/gpt2-medium-v4-32"),
        "log.progress_bar": False,
    })
