"""GPT-2 medium (355M) pretraining on a TPU v4-32 pod slice (16 chips, 4 hosts), the README's
worked example: ``scripts/launch_tpu_pod.sh train`` runs it on every host.

Data and tokenizer paths come from the environment (the same path on every host): ``DATA``, a
text/JSONL corpus or a hub dataset read as a stream, and ``TOKENIZER``, GPT-2's BPE files
(``vocab.json`` + ``merges.txt``). The run folder, ``RUN``, must be on a filesystem every host
mounts (each host writes its own shards of every checkpoint).
"""

import os

from train.config import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model="gpt2-medium",
        model_overrides={"dtype": "bfloat16", "embed_dropout": 0.0, "attn_dropout": 0.0, "resid_dropout": 0.0},
        train_data=os.environ.get("DATA", "/mnt/shared/openwebtext/train.jsonl"),
        tokenizer=os.environ.get("TOKENIZER", "/mnt/shared/gpt2-tokenizer"),
        streaming=True,
        seq_len=1024,
        batch_size=512,  # 0.5M tokens per step: 32 rows per chip
        grad_accum=8,  # microbatches of 4 rows per chip: 24.5 GiB of the 32 (scripts/benchmark.py --mode memory)
        mesh={"data": 4, "fsdp": 4, "model": 1},  # fsdp within each host's 4 chips, data across hosts
        steps=100_000,
        learning_rate=3e-4,
        warmup_steps=2_000,
        weight_decay=0.1,
        log_every=50,
        eval_every=2_000,
        checkpoint_every=1_000,
        workdir=os.environ.get("RUN", "/mnt/shared/runs/gpt2-medium-v4-32"),
        progress_bar=False,
    )
