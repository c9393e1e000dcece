"""Questions 6-8, the ULMFiT methods: do slanted triangular rates, concat pooling and gradual
unfreezing help fine-tuning?

One experiment answers all three: the fine-tuning issue's ablation (``scripts/ulmfit_ablation.py``,
run here as it is), which fine-tunes the main job's SOTU GPT-2 and the real all-MiniLM-L6-v2 on
SpamAssassin and SOTU party, starting plain and adding STLR, discriminative rates, gradual
unfreezing and concat pooling one at a time, over three seeds, plus two side rows for GPT-2 (STLR
with gradual unfreezing, STLR with concat pooling). Each question reads the pairs of rows that
differ by its method alone. The runs resume: a rerun skips the runs already in
``runs/ulmfit-ablation/*/results.jsonl``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys

from experiments import common

RESULT = "ulmfit"  # the JSON that q6, q7 and q8 share
# question -> the pairs of rows (without the method, with it) that answer it: on plain + STLR
# (the side rows, GPT-2 only), and on the cumulative ladder
COMPARISONS = {
    "q6": [("plain", "+stlr")],
    "q7": [("+stlr", "+stlr +concat"), ("+gradual", "+concat")],
    "q8": [("+stlr", "+stlr +gradual"), ("+discr", "+gradual")],
}


def run(scale: bool = False) -> dict:
    command = [sys.executable, str(common.REPO / "scripts" / "ulmfit_ablation.py")] + (["--full"] if scale else [])
    subprocess.run(command, check=True, cwd=common.REPO)
    out = common.REPO / "runs" / "ulmfit-ablation" / ("full" if scale else "cpu")
    result = {"questions": [6, 7, 8], "command": " ".join(["python scripts/ulmfit_ablation.py"] + command[2:]),
              **json.loads((out / "ablation.json").read_text()), "runs": common.read_rows(out / "results.jsonl")}
    common.save(RESULT, result)
    shutil.copy(out / "ablation.png", common.RESULTS / "ulmfit_ablation.png")
    return result


def mean_spread(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean, sd = mean_spread(values)
    return f"{mean:.3f} ± {sd:.3f}" if len(values) > 1 else f"{mean:.3f}"


def ablation_table(rows: list[dict]) -> str:
    """The ablation's aggregated rows (``scripts/ulmfit_ablation.py``) as a markdown table."""
    lines = ["| task | model | method | test accuracy | test macro-F1 | steps | wall time per run (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pm = (lambda m: f"{m[0]:.3f} ± {m[1]:.3f}") if r["seeds"] > 1 else (lambda m: f"{m[0]:.3f}")
        lines.append(f"| {r['task']} | {r['model']} | {r['method']} | {pm(r['accuracy'])} | {pm(r['macro_f1'])} | "
                     f"{'-' if r['steps'] is None else r['steps']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def comparison(result: dict, before: str, after: str) -> str:
    rows = []
    for task in sorted({r["task"] for r in result["runs"]}):
        for model in sorted({r["model"] for r in result["runs"]}):
            runs = {v: {r["seed"]: r for r in result["runs"] if (r["task"], r["model"], r["variant"]) == (task, model, v)}
                    for v in (before, after)}
            seeds = sorted(set(runs[before]) & set(runs[after]))
            if not seeds:
                continue
            delta_f1 = [runs[after][s]["macro_f1"] - runs[before][s]["macro_f1"] for s in seeds]
            rows.append([task, model,
                         _mean_sd([runs[before][s]["accuracy"] for s in seeds]),
                         _mean_sd([runs[after][s]["accuracy"] for s in seeds]),
                         _mean_sd([runs[before][s]["macro_f1"] for s in seeds]),
                         _mean_sd([runs[after][s]["macro_f1"] for s in seeds]),
                         f"{sum(d > 0 for d in delta_f1)}/{len(seeds)}"])
    return common.markdown_table(
        ["task", "model", f"accuracy, {before}", f"accuracy, {after}", f"macro-F1, {before}", f"macro-F1, {after}",
         "seeds where macro-F1 rose"], rows,
        "Mean ± sample standard deviation over the seeds; the same seed gives both rows the same head "
        "initialisation and batch order. Sizes as in the full table's caption.",
    )


def tables(result: dict) -> dict[str, str]:
    out = {"ulmfit-ablation": ablation_table(result["rows"]) + "\n\n" + result["caption"]}
    for question, pairs in COMPARISONS.items():
        out[f"{question}-methods"] = "\n\n".join(comparison(result, before, after) for before, after in pairs)
    return out
