"""Question 4: does ALBERT's parameter sharing leave training and inference time unchanged?

The sharing benchmark (``bench.sharing``) times BERT and ALBERT encoders of the same depth and
width, with and without cross-layer sharing, in interleaved rounds in one process: once at a
short sequence, where the layers' matrices dominate the FLOPs, and once at a long one, where
attention does.
"""

from __future__ import annotations

from pathlib import Path

from bench.sharing import SharingSpec, compare_sharing
from experiments import common
from models.config import renamed

CPU = {
    "short sequence": SharingSpec(seq_len=128, batch_size=8, steps=5),
    "long sequence": SharingSpec(d_model=256, n_head=4, d_ff=1024, seq_len=2048,
                                 batch_size=1, steps=5),
}
ACCELERATOR = {
    "short sequence": SharingSpec(n_layer=12, d_model=768, n_head=12, d_ff=3072, seq_len=128, batch_size=64, steps=20),
    "long sequence": SharingSpec(n_layer=12, d_model=768, n_head=12, d_ff=3072, seq_len=8192, batch_size=1, steps=20),
}


def run(full: bool = False, runs: Path = common.RUNS) -> dict:
    settings = ACCELERATOR if full else CPU
    return {"question": 4, "settings": {name: compare_sharing(spec) for name, spec in settings.items()}}


def saved_spec(fields: dict) -> SharingSpec:
    """The spec a result records; one saved before the shared vocabulary has the old names
    (``models.config.RENAMED``, and ``factorised_embedding_size`` for ``d_embed``)."""
    fields = renamed(fields)
    if "factorised_embedding_size" in fields:
        fields["d_embed"] = fields.pop("factorised_embedding_size")
    return SharingSpec(**fields)


def tables(result: dict) -> dict[str, str]:
    out = {}
    for i, (name, r) in enumerate(result["settings"].items()):
        s = saved_spec(r["spec"])
        rows = [[row["variant"], row["embedding_size"], row["layer_groups"], f"{row['params']:,}",
                 f"{row['train_step_s']:.3f}", f"{row['train_step_vs_bert']:.2f}", f"{row['inference_s'] * 1e3:.0f}",
                 f"{row['inference_vs_bert']:.2f}"] for row in r["rows"]]
        caption = (f"{name}: {s.n_layer} layers, hidden {s.d_model}, {s.n_head} heads, MLP "
                   f"{s.d_ff}, vocabulary {s.vocab_size:,}, batch {s.batch_size} x {s.seq_len} tokens; "
                   f"attention is {r['attention_flops_fraction']:.0%} of a layer's FLOPs per token. Medians of "
                   f"{s.steps} interleaved rounds after compilation on {r['device']}, dropout off.")
        out[f"q4-{i + 1}"] = common.markdown_table(
            ["variant", "E", "layer groups", "parameters", "train step (s)", "vs BERT", "inference (ms)", "vs BERT"],
            rows, caption)
    return out

