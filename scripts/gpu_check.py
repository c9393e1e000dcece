"""The GPU check, under 5 minutes on one GPU: ``python scripts/gpu_check.py --out gpu_check.json``.

1. MFU: the bf16 train step of ``gpt2`` (124M; fp32 parameters and AdamW, bf16 compute, dropout
   off, 1024 tokens per row) at the largest batch the memory plan (``bench/memory.py``) fits on
   this device (whole rows, not only powers of two), timed by ``bench/train_step.py``, against the device's dense bf16 peak (a table
   of known GPUs, else a measured matmul). The target is 50% on an H100.
2. Fit: the plan's largest batch for ``gpt2-xl`` with fp32 AdamW on this device (dropout off, no
   remat, layers scanned for a short compile) is trained for two steps, and the batch above it
   is tried too: the plan is right if the first runs and the second runs out of memory. The
   device's peak bytes in use are reported next to the plan's total.

``--tiny`` runs the same on a CPU (gpt2-tiny, and gpt2-mini on a pretend 0.25 GiB device, without
the out-of-memory trial) to check the script, not the GPU. Prints one JSON object.
"""

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

import models  # noqa: E402
from bench.measure import device_peak_bytes, environment, matmul_peak_flops  # noqa: E402
from bench.memory import MemorySpec, largest_batch  # noqa: E402
from bench.spec import BenchSpec  # noqa: E402
from bench.train_step import benchmark_train_step, prepare_ours  # noqa: E402
from jaxlm import cli  # noqa: E402

# Dense bf16 peak FLOP/s by device kind (vendor figures, without sparsity).
BF16_PEAK = {"H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.5e12, "H100": 989.4e12, "H200": 989.4e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def device_memory_gib() -> float:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats["bytes_limit"] / (1 << 30) if "bytes_limit" in stats else None


def largest(fields: dict, memory_gib: float) -> dict | None:
    """The memory plan of the largest batch that fits ``memory_gib`` (all of it: ``bytes_limit``
    is already what JAX may use), or None."""
    return largest_batch(MemorySpec(device="custom", device_memory_gib=memory_gib, usable_fraction=1.0, **fields))


def mfu(model: str, memory_gib: float, seq_len: int, peak: float | None) -> dict:
    planned = largest(dict(model=models.get_config(model).without_dropout(), seq_len=seq_len, dtype="bfloat16"),
                      memory_gib)
    if planned is None:
        raise ValueError(f"{model} at one row of {seq_len} tokens does not fit {memory_gib:.1f} GiB")
    batch = planned["spec"]["batch_size"]
    spec = BenchSpec(model=model, seq_len=seq_len, batch_size=batch, dtype="bfloat16", steps=10, warmup=2)
    if peak is None:
        measured = matmul_peak_flops("bfloat16")
        peak, source = measured["flops_per_s"], f"measured {measured['n']}^2 bf16 matmul"
    else:
        source = "vendor dense bf16 peak"
    result = benchmark_train_step(spec, peak / 1e12)
    ours = result["ours"]
    return {"model": model, "batch": [batch, seq_len], "planned_gib": planned["gib_per_device"]["total"],
            "step_s": ours["step_s"], "tokens_per_s": ours["tokens_per_s"], "mfu": ours["mfu"],
            "peak_tflops": peak / 1e12, "peak_source": source, "device_peak_gib": _gib(ours["device_peak_bytes"])}


def _gib(n):
    return None if n is None else round(n / (1 << 30), 3)


def try_steps(model: str, batch: int, seq_len: int) -> dict:
    """Two fp32 train steps of ``model`` at ``batch``: ran, or ran out of memory."""
    spec = BenchSpec(model=scanned(model), seq_len=seq_len, batch_size=batch, steps=2, warmup=1)
    t0 = time.perf_counter()
    try:
        contender = prepare_ours(spec)
        contender.step()
    except Exception as e:  # noqa: BLE001  (XLA reports running out of memory as a runtime error)
        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
            raise
        return {"batch": batch, "ran": False, "seconds": time.perf_counter() - t0, "error": str(e).splitlines()[0][:300]}
    return {"batch": batch, "ran": True, "seconds": time.perf_counter() - t0, "device_peak_gib": _gib(device_peak_bytes())}


def scanned(model: str):
    """``model`` with its layers scanned (a short compile) and dropout off."""
    return models.get_config(model, scan_layers=True).without_dropout()


def fit(model: str, memory_gib: float, seq_len: int) -> dict:
    planned = largest(dict(model=scanned(model), seq_len=seq_len), memory_gib)
    batch = planned and planned["spec"]["batch_size"]
    out = {"model": model, "seq_len": seq_len, "device_memory_gib": memory_gib, "planned_largest_batch": batch}
    if batch is None:
        out["prediction"] = "does not fit at one row"
        out["above"] = try_steps(model, 1, seq_len)
        out["plan_right"] = not out["above"]["ran"]
        return out
    out["planned_gib"] = planned["gib_per_device"]
    out["at_planned"] = try_steps(model, batch, seq_len)
    if jax.default_backend() == "cpu":  # host memory has no device limit to run out of
        out["plan_right"] = out["at_planned"]["ran"]
        return out
    out["above"] = try_steps(model, batch + 1, seq_len)
    out["plan_right"] = out["at_planned"]["ran"] and not out["above"]["ran"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on any device, to check the script")
    parser.add_argument("--out", help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    env = environment()
    kind = env["device"]
    memory = 4.0 if args.tiny else device_memory_gib()
    if memory is None:
        raise ValueError(f"{kind} reports no memory limit: run the check on a GPU (or with --tiny)")
    peak = None if args.tiny else next((v for k, v in BF16_PEAK.items() if k in kind), None)
    result = {
        "device": kind, "backend": env["backend"], "device_memory_gib": memory,
        "mfu": mfu("gpt2-tiny" if args.tiny else "gpt2", memory, 64 if args.tiny else 1024, peak),
        "fit": fit("gpt2-mini" if args.tiny else "gpt2-xl", memory / 16 if args.tiny else memory,
                   128 if args.tiny else 1024),
        "environment": env,
    }
    result["seconds"] = time.perf_counter() - t0
    result["mfu_target_met"] = None if args.tiny else result["mfu"]["mfu"] >= 0.5
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    cli.quiet_libraries()
    try:
        main()
    except cli.expected_errors() as e:  # one line and exit status 2, as the jaxlm commands do
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
