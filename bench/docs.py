"""docs/benchmarks.md, generated from the measurements' JSON in docs/results/ (no figure typed by hand).

    python -m bench.docs                          # regenerate docs/benchmarks.md from the JSON
    python -m bench.docs main-job RUN --seconds S # record the main job's run folder (after scripts/main.sh)
    python -m bench.docs tests LOG --tier whole   # record a pytest run's summary line and time
    python -m bench.docs memory                   # compute the memory plans (from shapes, no devices)

Each recorder writes one JSON file with the machine it ran on (its cores: each was measured with
nothing else running); ``render``
turns the files into the document, and a test checks the document equals what they generate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

# The memory plans the document shows, 1,024-token rows, dropout off: batch None is the largest that fits.
MEMORY_PLANS = [
    dict(caption="gpt2-xl, one 80 GB GPU, fp32, no remat", model="gpt2-xl", mesh={"data": 1}, dtype="float32",
         remat="none", device="h100-80gb"),
    dict(caption="gpt2-xl, one 80 GB GPU, fp32, full remat", model="gpt2-xl", mesh={"data": 1}, dtype="float32",
         remat="full", device="h100-80gb"),
    dict(caption="gpt2-xl, one 80 GB GPU, bf16, full remat", model="gpt2-xl", mesh={"data": 1}, dtype="bfloat16",
         remat="full", device="h100-80gb"),
    dict(caption="gpt2-xl, TPU v4-32 (16 chips), bf16, fsdp 16, no remat", model="gpt2-xl",
         mesh={"data": 1, "fsdp": 16}, dtype="bfloat16", remat="none", device="tpu-v4"),
    dict(caption="gpt2-xl, TPU v4-32, bf16, fsdp 16, full remat", model="gpt2-xl", mesh={"data": 1, "fsdp": 16},
         dtype="bfloat16", remat="full", device="tpu-v4"),
    dict(caption="gpt2-medium, TPU v4-32, bf16, data 4 x fsdp 4, grad_accum 8 (scripts/configs/gpt2_medium_v4_32.py)",
         model="gpt2-medium", mesh={"data": 4, "fsdp": 4}, dtype="bfloat16", remat="none", device="tpu-v4",
         batch=512, grad_accum=8),
]


def machine() -> dict:
    """Where a measurement ran: its cores. (The load average when a result is recorded is the
    measurement's own; the benchmarks record other processes' use while they run.)"""
    return {"cpus": os.cpu_count()}


def record_main_job(run_dir: Path, seconds: float) -> Path:
    """docs/results/main_job.json from the main job's run folder (its evaluation.json and
    metrics.jsonl) and its wall time."""
    from train.metrics import read_metrics

    run_dir = Path(run_dir)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    rows = [r for r in read_metrics(run_dir) if r["split"] == "train" and r.get("tokens_per_sec")]
    result = {
        "command": "bash scripts/main.sh", "seconds": round(seconds, 1), "machine": machine(),
        "steps": rows[-1]["step"] if rows else None,
        "median_tokens_per_sec": round(statistics.median(r["tokens_per_sec"] for r in rows)) if rows else None,
        "validation": {k: evaluation[k] for k in ("loss", "perplexity", "tokens")},
        "unigram_baseline": evaluation.get("unigram_baseline"),
        "params": evaluation.get("param_bytes", 0) // 4,
    }
    return _save("main_job", result)


def record_tests(log: Path, tier: str) -> Path:
    """docs/results/tests_TIER.json from pytest's last summary line (``N passed, M skipped in Xs``)."""
    lines = [line for line in Path(log).read_text().splitlines() if re.search(r"\d+ passed", line)]
    if not lines:
        raise ValueError(f"{log} has no pytest summary line ('N passed ... in Xs')")
    line = lines[-1]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", line)}
    seconds = float(re.search(r"in ([\d.]+)s", line).group(1))
    return _save(f"tests_{tier}", {"tier": tier, "seconds": seconds, **counts, "machine": machine()})


def record_memory() -> Path:
    """docs/results/memory.json: the plans of ``MEMORY_PLANS`` (``jaxlm benchmark --mode memory``)."""
    import models
    from bench.memory import MemorySpec, largest_batch, plan

    rows = []
    for row in MEMORY_PLANS:
        config = models.get_config(row["model"], dtype=row["dtype"], remat=row["remat"]).without_dropout()
        spec = MemorySpec(model=config, mesh=row["mesh"], batch_size=row.get("batch") or 1,
                          grad_accum=row.get("grad_accum", 1), seq_len=1024, dtype=row["dtype"], remat=row["remat"],
                          device=row["device"])
        result = plan(spec) if row.get("batch") else largest_batch(spec)
        rows.append({"caption": row["caption"], "batch_size": result["spec"]["batch_size"] if result else None,
                     **({k: result[k] for k in ("per_device_microbatch", "attention", "gib_per_device", "usable_gib",
                                                "fits")} if result else {"fits": False})})
    return _save("memory", {"rows": rows})


def _save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _load_note(m: dict) -> str:
    return f"{m['cpus']}-core CPU, nothing else running"


def render() -> str:
    """The document, from whatever JSON docs/results/ holds."""
    out = ["# Measured figures", "",
           "Generated by `python -m bench.docs` from `docs/results/*.json`; do not edit by hand. The question",
           "experiments' tables are in [REPORT.md](../REPORT.md).", ""]
    main = _load("main_job")
    out += ["## The main job", ""]
    if main:
        v, u = main["validation"], main["unigram_baseline"] or {}
        out += [f"`{main['command']}` with its environment set up (the download, the tokenizer, training, evaluation "
                f"and the sample): {main['seconds'] / 60:.1f} minutes in all, "
                f"{main['steps']} training steps at a median {main['median_tokens_per_sec']:,} tokens/s "
                f"({_load_note(main['machine'])}).", "",
                "| model (validation split) | loss (nats/token) | perplexity | tokens |", "| --- | --- | --- | --- |"]
        if u:
            out.append(f"| unigram baseline (training-split counts, add-one) | {u['loss']:.3f} | {u['perplexity']:.1f} | "
                       f"{u['tokens']:,} |")
        out += [f"| `gpt2-mini` | {v['loss']:.3f} | {v['perplexity']:.1f} | {v['tokens']:,} |", ""]
    else:
        out += ["Not recorded yet: run `bash scripts/main.sh`, then `python -m bench.docs main-job runs/gpt2-mini-sotu "
                "--seconds S`.", ""]
    out += ["## The test suite", ""]
    rows = [r for r in (_load("tests_whole"), _load("tests_fast")) if r]
    if rows:
        out += ["| tier | command | passed | skipped | minutes | machine |", "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            command = "bash scripts/test.sh" + (' -m "not slow"' if r["tier"] == "fast" else "")
            out.append(f"| {r['tier']} | `{command}` | {r.get('passed', 0)} | {r.get('skipped', 0)} | "
                       f"{r['seconds'] / 60:.1f} | {_load_note(r['machine'])} |")
        out.append("")
    else:
        out += ["Not recorded yet: `python -m bench.docs tests LOG --tier whole|fast`.", ""]
    out += cpu_against_pytorch()
    speculative = _load("speculative")
    if speculative:
        out += ["## Speculative decoding", "",
                "The main job's model decoding greedily with the distilled student as its draft (`models.speculative`), "
                f"{speculative['date']}: `{speculative['command']}`.", "", speculative["markdown"].strip(), ""]
    memory = _load("memory")
    if memory:
        out += ["## Memory plans", "",
                "`jaxlm benchmark --mode memory` (from shapes, no device needed): GiB per device of fp32 parameters, "
                "AdamW state and gradients, activations (what autodiff keeps, per device microbatch) and workspace; "
                "1,024-token rows, dropout off; the global batch is the largest that fits unless the configuration names one.", "",
                "| configuration | global batch | per-device microbatch | attention | params + AdamW + grads | "
                "activations | total | usable | fits |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in memory["rows"]:
            if r["batch_size"] is None:
                out.append(f"| {r['caption']} | does not fit one row | | | | | | | no |")
                continue
            g = r["gib_per_device"]
            state = g["params"] + g["optimizer"] + g["gradients"]
            out.append(f"| {r['caption']} | {r['batch_size']} | {r['per_device_microbatch'][0]} | {r['attention']} | "
                       f"{state:.2f} | {g['activations']:.2f} | {g['total']:.2f} | {r['usable_gib']:.1f} | "
                       f"{'yes' if r['fits'] else 'no'} |")
        out.append("")
    return "\n".join(out)


def _fmt_cell(x) -> str:
    return ", ".join(f"{v:g}" for v in x) if isinstance(x, list) else f"{x:g}"


def cpu_against_pytorch() -> list[str]:
    """The side-by-side runs against PyTorch on this CPU (their own tables, marked * when measured
    under load), the targets, what each change tried gave, and what bounds the rest."""
    from bench.measure import load_note, mark

    infer, train, tuning = _load("cpu_infer"), _load("cpu_train_step"), _load("cpu_tuning")
    if not (infer and train):
        return []
    decode, torch = infer["rows"]["float32"], infer["rows"]["torch"]
    cores = max(c for c in (infer.get("other_processes_cpu_cores"), train.get("other_processes_cpu_cores"), 0)
                if c is not None)
    ratio = lambda x: mark(f"{x:.2f}", cores)  # noqa: E731
    out = ["## This CPU against PyTorch", "",
           f"Side by side in one run each (interleaved rounds, medians after compilation), {infer['date']}: "
           f"`{infer['command']}` and `{train['command']}`; {load_note(cores)}.", "",
           "| what | target | measured | met |", "| --- | --- | --- | --- |"]
    for what, target, value, met in [
        ("`gpt2` fp32 batch-1 decoding: PyTorch `generate`'s time over ours", "1.4", torch["decode_b1"]["vs_fp32"],
         torch["decode_b1"]["vs_fp32"] >= 1.4),
        ("the same: share of the measured bandwidth limit", "0.8", decode["of_limit"], decode["of_limit"] >= 0.8),
        ("`gpt2` train step (2 x 256): PyTorch's time over ours", "1.15",
         train["ratios"]["torch_reference_over_ours_step_time"], train["ratios"]["torch_reference_over_ours_step_time"] >= 1.15),
        ("MiniLM encoder (32 x 128): PyTorch `BertModel`'s time over ours", "1.2", torch["encode"]["vs_fp32"],
         torch["encode"]["vs_fp32"] >= 1.2),
    ]:
        out.append(f"| {what} | {target} | {ratio(value)} | {'yes' if met else 'no'} |")
    out += ["", "Inference:", "", infer["markdown"].strip(), "", "Train step:", "", train["markdown"].strip(), ""]
    if tuning:
        out += ["### What each change gave", "",
                f"Measured one change at a time on this 2-core CPU ({tuning['machine']['note']}); rows marked under "
                "load are directions, not sizes.", "",
                "| change | measure | before | after | adopted | how | note |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in tuning["rows"]:
            out.append(f"| {r['change']} | {r['measure']} | {_fmt_cell(r['before'])} | {_fmt_cell(r['after'])} | "
                       f"{'yes' if r['adopted'] else 'no'} | {r['how']} | "
                       f"{'MEASURED UNDER LOAD; ' if r['under_load'] else ''}{r.get('note', '')} |")
        out += ["", "### What bounds the targets not met", ""]
        out += [f"- {name}: {text}" for name, text in tuning["bounds"].items()]
        out.append("")
    return out


def write() -> Path:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render())
    return DOC


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what")
    main_job = sub.add_parser("main-job")
    main_job.add_argument("run_dir", type=Path)
    main_job.add_argument("--seconds", type=float, required=True, help="the main job's wall time")
    tests = sub.add_parser("tests")
    tests.add_argument("log", type=Path)
    tests.add_argument("--tier", choices=["whole", "fast"], required=True)
    sub.add_parser("memory")
    args = parser.parse_args(argv)
    if args.what == "main-job":
        record_main_job(args.run_dir, args.seconds)
    elif args.what == "tests":
        record_tests(args.log, args.tier)
    elif args.what == "memory":
        record_memory()
    print(write())


if __name__ == "__main__":
    main()
