"""The GPU check: one staged run on one GPU, each stage within its own time budget.

    python -u scripts/gpu_check.py --out gpu_check          # on the GPU machine: writes gpu_check/
    python scripts/gpu_check.py --tiny --out /tmp/gpu_check # every stage on a CPU at tiny sizes

The stages, in order of value; one that would overrun the run's budget (``--budget-s``) is
skipped and recorded as skipped, so a slow stage cannot eat the rest:

a. ``environment``: the device, its memory, the versions, a measured bf16 matmul rate and the
   device's memory bandwidth (a large copy): the ceilings of what follows.
b. ``train_step``: ``gpt2`` (124M), bf16 compute, fp32 parameters and AdamW, dropout off,
   1,024-token rows, at the largest batch the memory plan (``bench.memory``) fits; MFU against
   the vendor's dense bf16 peak and against the measured matmul rate.
c. ``decode``: cached greedy decoding of ``gpt2`` (``models.generation.sample``), batch 1 in fp32,
   bf16 and int8 weights (int8 needs qwix), 128 new tokens; throughput at batch 64.
d. ``memory``: ``gpt2-xl`` (fp32 AdamW, layers scanned) at its largest planned batch runs two
   steps; the device's peak bytes in use beside the plan's total.
e. ``medium``: ``gpt2-medium``'s train-step MFU, if time is left.
f. ``speculative``: greedy speculative decoding of ``gpt2`` at batch 1, its own first two layers
   the draft (``models.speculative``), k = 2 and 4, against plain cached decoding.

After each stage the JSON so far is written to ``OUT/gpu_check.json`` and one line is printed
(flushed); ``OUT/gpu_check.md`` holds the table at the end. The process writes its own files:
run it without pipes. It needs jax (a CUDA build), flax, optax and orbax, not the data stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import models  # noqa: E402
from bench.measure import device_peak_bytes, environment, matmul_peak_flops  # noqa: E402
from bench.memory import MemorySpec, largest_batch  # noqa: E402
from bench.spec import BenchSpec  # noqa: E402
from bench.train_step import benchmark_train_step, prepare_ours  # noqa: E402

# Dense bf16 peak FLOP/s by device kind (vendor figures, without sparsity).
BF16_PEAK = {"H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.5e12, "H100": 989.4e12, "H200": 989.4e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12}

# Each stage's time budget in seconds (a GPU's; --tiny divides them by 10), in the order they run.
BUDGETS = {"environment": 30, "train_step": 150, "decode": 120, "memory": 100, "medium": 90, "speculative": 60}

# The sizes of a GPU run and of --tiny's CPU dry run.
SIZES = {
    "gpu": dict(model="gpt2", seq_len=1024, new_tokens=128, big_batch=64, fit_model="gpt2-xl", medium="gpt2-medium",
                memory_gib=None),
    "tiny": dict(model="gpt2-tiny", seq_len=32, new_tokens=8, big_batch=4, fit_model="gpt2-tiny",
                 medium="openai-gpt-tiny", memory_gib=0.02),
}


def _gib(n):
    return None if n is None else round(n / (1 << 30), 3)


def device_memory_gib() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats["bytes_limit"] / (1 << 30) if "bytes_limit" in stats else None


def copy_bandwidth(mib: int, repeats: int = 5) -> float:
    """Bytes/s of a jitted copy of a ``mib``-MiB array (read once, written once): the device's
    memory bandwidth, which batch-1 decoding is bound by."""
    x = jnp.ones((mib << 18,), jnp.float32)
    copy = jax.jit(lambda a: a + 1)
    copy(x).block_until_ready()
    best = min(_timed(lambda: copy(x).block_until_ready()) for _ in range(repeats))
    return 2 * x.nbytes / best


def _timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def stage_environment(s: dict, state: dict) -> dict:
    env = environment()
    matmul = matmul_peak_flops("bfloat16", n=512 if s is SIZES["tiny"] else None)
    state["measured_peak"] = matmul["flops_per_s"]
    state["vendor_peak"] = next((v for k, v in BF16_PEAK.items() if k in env["device"]), None)
    return {"device": env["device"], "backend": env["backend"], "versions": env["versions"],
            "device_memory_gib": state["memory_gib"], "bf16_matmul_tflops": matmul["flops_per_s"] / 1e12,
            "vendor_bf16_tflops": state["vendor_peak"] and state["vendor_peak"] / 1e12,
            "copy_bandwidth_gb_s": copy_bandwidth(16 if s is SIZES["tiny"] else 2048) / 1e9}


def _largest(config, seq_len: int, memory_gib: float, dtype: str = "float32") -> dict | None:
    """The memory plan of the largest batch that fits all of ``memory_gib`` (JAX's ``bytes_limit``
    is already what it may use)."""
    return largest_batch(MemorySpec(model=config, seq_len=seq_len, dtype=dtype, device="custom",
                                    device_memory_gib=memory_gib, usable_fraction=1.0))


def _train_step(model: str, s: dict, state: dict) -> dict:
    config = models.get_config(model, dtype="bfloat16").without_dropout()
    seq_len = min(s["seq_len"], config.n_positions)
    planned = _largest(config, seq_len, state["memory_gib"], "bfloat16")
    if planned is None:
        raise ValueError(f"{model} at one row of {seq_len} tokens does not fit {state['memory_gib']:.1f} GiB")
    batch = planned["spec"]["batch_size"]
    spec = BenchSpec(model=config, seq_len=seq_len, batch_size=batch, dtype="bfloat16", steps=5, warmup=1)
    ours = benchmark_train_step(spec, state["measured_peak"] / 1e12)["ours"]
    vendor = state["vendor_peak"]
    return {"model": model, "batch": [batch, seq_len], "attention": "jax.nn.dot_product_attention (XLA's choice)",
            "planned_gib": planned["gib_per_device"]["total"], "step_s": ours["step_s"],
            "tokens_per_s": ours["tokens_per_s"], "mfu_measured_peak": ours["mfu"],
            "mfu_vendor_peak": vendor and ours["mfu"] * state["measured_peak"] / vendor,
            "device_peak_gib": _gib(ours.get("device_peak_bytes"))}


def stage_train_step(s: dict, state: dict) -> dict:
    return _train_step(s["model"], s, state)


def stage_medium(s: dict, state: dict) -> dict:
    return _train_step(s["medium"], s, state)


def stage_decode(s: dict, state: dict) -> dict:
    from models import quantize
    from models.generation import sample

    module, config = models.create(s["model"])
    params = models.init_params(module, jax.random.key(0))
    prompts = jax.random.randint(jax.random.key(1), (s["big_batch"], 16), 0, config.vocab_size).tolist()
    rows = {}
    for name, variant in (("float32", {}), ("bfloat16", {"dtype": "bfloat16"}), ("int8", {"quantize": "int8"})):
        try:
            vmodule, vparams = quantize.prepare(module, params, **variant)
        except ImportError as e:  # qwix is not on every GPU machine
            rows[name] = {"status": "skipped", "reason": f"{e}"}
            continue
        row = {}
        for batch in (1, s["big_batch"]):
            sample(vmodule, vparams, prompts[:batch], s["new_tokens"], temperature=0.0)  # compile
            out = sample(vmodule, vparams, prompts[:batch], s["new_tokens"], temperature=0.0)
            row[f"batch_{batch}_tokens_per_s"] = out.tokens_per_s
        rows[name] = row
    return {"model": s["model"], "new_tokens": s["new_tokens"], "rows": rows}


def stage_memory(s: dict, state: dict) -> dict:
    config = models.get_config(s["fit_model"], scan_layers=True).without_dropout()
    seq_len = min(s["seq_len"], config.n_positions)
    planned = _largest(config, seq_len, state["memory_gib"])
    if planned is None:
        return {"model": s["fit_model"], "planned_largest_batch": None, "plan_right": None,
                "note": "the plan says one row does not fit"}
    batch = planned["spec"]["batch_size"]
    contender = prepare_ours(BenchSpec(model=config, seq_len=seq_len, batch_size=batch, steps=2, warmup=1))
    contender.step()
    measured = _gib(device_peak_bytes())
    plan_total = planned["gib_per_device"]["total"]
    return {"model": s["fit_model"], "planned_largest_batch": batch, "seq_len": seq_len, "planned_gib": plan_total,
            "device_peak_gib": measured, "ran": True,
            "plan_over_measured": measured and plan_total / measured}


def stage_speculative(s: dict, state: dict) -> dict:
    """Greedy speculative decoding of ``gpt2`` at batch 1 (random weights), its own first two
    layers the draft, against plain cached decoding in the same stage."""
    from models.generation import sample
    from models.speculative import first_layers, speculative_sample

    module, config = models.create(s["model"])
    params = models.init_params(module, jax.random.key(0))
    draft, draft_params = first_layers(module, params, 1 if config.n_layer <= 2 else 2)
    prompt = jax.random.randint(jax.random.key(1), (1, 16), 0, config.vocab_size).tolist()
    sample(module, params, prompt, s["new_tokens"], temperature=0.0)  # compile
    rows = {"plain": {"tokens_per_s": sample(module, params, prompt, s["new_tokens"], temperature=0.0).tokens_per_s}}
    for k in (2, 4):
        speculative_sample(module, params, draft, draft_params, prompt, s["new_tokens"], k=k, temperature=0.0)
        out = speculative_sample(module, params, draft, draft_params, prompt, s["new_tokens"], k=k, temperature=0.0)
        rows[f"k={k}"] = {"tokens_per_s": out.tokens_per_s, "acceptance_rate": out.acceptance_rate,
                          "target_passes": out.steps}
    return {"model": s["model"], "draft": f"its first {draft.config.n_layer} layers", "rows": rows}


STAGES = {"environment": stage_environment, "train_step": stage_train_step, "decode": stage_decode,
          "memory": stage_memory, "medium": stage_medium, "speculative": stage_speculative}


def run(out: Path, tiny: bool = False, budget_s: float = 420.0) -> dict:
    """Run the stages within ``budget_s``, writing ``out/gpu_check.json`` after each."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = SIZES["tiny" if tiny else "gpu"]
    state = {"memory_gib": sizes["memory_gib"] or device_memory_gib()}
    if state["memory_gib"] is None:
        raise ValueError(f"{environment()['device']} reports no memory limit: run the check on a GPU, or with --tiny")
    scale = 10 if tiny else 1
    result = {"tiny": tiny, "budget_s": budget_s, "stages": {}}
    start = time.perf_counter()
    for name, stage in STAGES.items():
        budget = BUDGETS[name] / scale
        elapsed = time.perf_counter() - start
        if elapsed + budget > budget_s:
            record = {"status": "skipped", "reason": f"{elapsed:.0f} s spent, its budget of {budget:.0f} s would "
                                                     f"pass the run's {budget_s:.0f} s", "seconds": 0.0}
        else:
            t0 = time.perf_counter()
            try:
                record = {"status": "ok", **stage(sizes, state)}
            except Exception as e:  # noqa: BLE001  (a failed stage is recorded; the next ones still run)
                record = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            record["seconds"] = round(time.perf_counter() - t0, 2)
            record["over_budget"] = record["seconds"] > budget
        result["stages"][name] = record
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"{name}: {record['status']} in {record['seconds']:.1f} s", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 2)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result), flush=True)
    return result


def _f(x, spec=".1f") -> str:
    return "" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    st = result["stages"]
    env = st.get("environment", {})
    lines = [f"GPU check on {env.get('device', '?')} ({env.get('backend', '?')}), {result.get('seconds', 0):.0f} s "
             f"of a {result['budget_s']:.0f} s budget{' (--tiny: CPU dry run)' if result['tiny'] else ''}.", "",
             "| stage | status | seconds | figures |", "| --- | --- | --- | --- |"]
    for name, r in st.items():
        if r["status"] != "ok":
            figures = r.get("reason") or r.get("error", "")
        elif name == "environment":
            figures = (f"bf16 matmul {_f(r['bf16_matmul_tflops'])} TFLOP/s (vendor {_f(r['vendor_bf16_tflops'])}), "
                       f"copy {_f(r['copy_bandwidth_gb_s'])} GB/s, {_f(r['device_memory_gib'])} GiB")
        elif name in ("train_step", "medium"):
            figures = (f"{r['model']} {r['batch'][0]} x {r['batch'][1]}: {_f(r['tokens_per_s'], ',.0f')} tokens/s, "
                       f"MFU {_f(r['mfu_vendor_peak'], '.3f')} of vendor peak, {_f(r['mfu_measured_peak'], '.3f')} of "
                       "measured matmul")
        elif name == "speculative":
            figures = f"{r['model']}, draft {r['draft']}, batch 1: " + "; ".join(
                f"{v}: {_f(row['tokens_per_s'], ',.0f')} tok/s" + (f" (kept {_f(row['acceptance_rate'], '.2f')})"
                                                                    if "acceptance_rate" in row else "")
                for v, row in r["rows"].items())
        elif name == "decode":
            figures = "; ".join(f"{v}: " + ", ".join(f"{k.split('_')[1]}: {_f(x, ',.0f')} tok/s"
                                                     for k, x in row.items() if k.startswith("batch"))
                                for v, row in r["rows"].items() if "status" not in row)
        else:
            figures = (f"{r['model']} batch {r['planned_largest_batch']}: plan {_f(r.get('planned_gib'), '.2f')} GiB, "
                       f"measured peak {_f(r.get('device_peak_gib'), '.2f')} GiB")
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.1f} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", "--output-dir", dest="out", default="gpu_check", help="the folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--tiny", action="store_true", help="every stage on any device at tiny sizes")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run's time budget in seconds")
    args = parser.parse_args(argv)
    return run(Path(args.out), tiny=args.tiny, budget_s=args.budget_s)


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # one line and exit status 2, as the jaxlm commands do
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
