"""Which formulation of a matrix-vector product with 16- or 8-bit weights does XLA run fastest here?

Batch-1 decoding is a chain of matrix-vector products, each reading its weight matrix once: its
speed is the rate at which the weights stream in. bf16 and int8 weights halve and quarter the
bytes, and pay off only if a product reads them at close to fp32's rate in bytes per second.

Each formulation computes ``y = x W`` (``x``: [batch, K] fp32; ``W``: [K, N], or stored [N, K]
where marked). XLA reads its flags once per process, so each flag set runs in its own process
(``python -m bench.formulations``); inside one, every formulation is compiled, then timed in
interleaved rounds. Reported: the median time, its ratio to the fp32 product in the same process,
and the weight bytes read per second.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA:CPU settings that decide which code runs a dot (jaxlib 0.10.2): YNNPACK (default for dots),
# XNNPACK fusions, Eigen (YNNPACK off), oneDNN, and fast math (reassociated reductions).
FLAG_SETS = {
    "default": "",
    "YNNPACK off (Eigen dots)": "--xla_cpu_experimental_ynn_fusion_type=",
    "YNNPACK dots + elementwise fusion": "--xla_cpu_experimental_ynn_fusion_type=individual_dot,dot,eltwise",
    "XNNPACK fusions": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "oneDNN": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true "
              "--xla_cpu_experimental_ynn_fusion_type=",
    "fast math": "--xla_cpu_enable_fast_math=true",
}


def formulations():
    """name -> (stored weight: "f32" | "bf16" | "int8", transposed [N, K]?, fn(x, w, scale) -> y)."""
    import jax
    import jax.numpy as jnp

    f32, bf16 = jnp.float32, jnp.bfloat16

    def int8_int8(x, q, s):  # activations quantized per row too: an int8 x int8 -> int32 product
        sx = jnp.abs(x).max(-1, keepdims=True) / 127
        xq = jnp.round(x / sx).astype(jnp.int8)
        return jax.lax.dot(xq, q, preferred_element_type=jnp.int32).astype(f32) * sx * s

    return {
        "fp32 dot": ("f32", False, lambda x, w, s: x @ w),
        "bf16 dot (bf16 out)": ("bf16", False, lambda x, w, s: x.astype(bf16) @ w),
        "bf16 dot, fp32 accumulation": ("bf16", False, lambda x, w, s: jnp.dot(x.astype(bf16), w,
                                                                               preferred_element_type=f32)),
        "bf16 -> fp32 in the jit, fp32 dot": ("bf16", False, lambda x, w, s: x @ w.astype(f32)),
        "bf16 multiply + reduce, [N, K]": ("bf16", True, lambda x, w, s: (w.astype(f32) * x[:, None, :]).sum(-1)),
        "int8 -> fp32, dot, scale the output": ("int8", False, lambda x, q, s: (x @ q.astype(f32)) * s),
        "int8 dequantized, fp32 dot (qwix)": ("int8", False, lambda x, q, s: x @ (q.astype(f32) * s)),
        "int8 -> bf16, bf16 dot": ("int8", False, lambda x, q, s: jnp.dot(x.astype(bf16), q.astype(bf16),
                                                                        preferred_element_type=f32) * s),
        "int8 x int8 dot, int32 accumulation": ("int8", False, int8_int8),
        "int8 multiply + reduce, [N, K]": ("int8", True, lambda x, q, s: (q.astype(f32) * x[:, None, :]).sum(-1) * s),
    }


def measure(k: int, n: int, batch: int, rounds: int) -> dict:
    """In this process: every formulation compiled, then timed in ``rounds`` interleaved rounds."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n), np.float32) * 0.02
    scale = np.abs(w).max(0) / 127
    stored = {"f32": w, "bf16": w.astype(jnp.bfloat16), "int8": np.round(w / scale).astype(np.int8)}
    x, s = jnp.asarray(rng.standard_normal((batch, k), np.float32)), jnp.asarray(scale)
    cases = {}
    for name, (kind, transposed, fn) in formulations().items():
        weight = jnp.asarray(stored[kind].T.copy() if transposed else stored[kind])
        f = jax.jit(fn)
        jax.block_until_ready(f(x, weight, s))
        cases[name] = (f, weight)
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (f, weight) in cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, weight, s))
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["fp32 dot"])
    return {name: {"median_s": statistics.median(t), "vs_fp32": statistics.median(t) / base,
                   "weight_bytes_per_s": cases[name][1].nbytes / statistics.median(t)} for name, t in times.items()}


def compare_formulations(shapes=((768, 3072), (768, 50257)), batch: int = 1, rounds: int = 20,
                         flag_sets: dict | None = None, log=sys.stderr) -> dict:
    """Every formulation under every flag set (one process each) for each [K, N] shape."""
    from bench.measure import CpuContention, environment

    flag_sets = FLAG_SETS if flag_sets is None else flag_sets
    results, contention = [], CpuContention()
    contention.start()
    for k, n in shapes:
        for label, flags in flag_sets.items():
            print(f"[{k}, {n}] x batch {batch}: {label}", file=log, flush=True)
            env = {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": REPO_ROOT}
            proc = subprocess.run([sys.executable, "-m", "bench.formulations", str(k), str(n), str(batch), str(rounds)],
                                  capture_output=True, text=True, env=env, cwd=REPO_ROOT)
            if proc.returncode:
                results.append({"shape": [k, n], "flags": label, "xla_flags": flags, "error": proc.stderr[-2000:]})
                continue
            results.append({"shape": [k, n], "flags": label, "xla_flags": flags,
                            "formulations": json.loads(proc.stdout.strip().splitlines()[-1])})
    out = {"mode": "formulations", "batch": batch, "rounds": rounds, "environment": environment(),
           "other_processes_cpu_cores": contention.stop(), "results": results}
    out["markdown"] = markdown(out)
    return out


def markdown(out: dict) -> str:
    """One table per shape: formulations down, flag sets across; time over the fp32 dot's in the same
    process (same flags) and, in brackets, GB/s of weights read."""
    from bench.measure import load_note, mark

    cores = out.get("other_processes_cpu_cores")
    lines = [load_note(cores) + "."]
    for shape in dict.fromkeys(tuple(r["shape"]) for r in out["results"]):
        runs = [r for r in out["results"] if tuple(r["shape"]) == shape and "formulations" in r]
        if not runs:
            continue
        lines += ["", f"Weights [{shape[0]}, {shape[1]}], batch {out['batch']}: time over the fp32 dot's under the "
                      "same flags (weight GB/s read)", "",
                  "| formulation | " + " | ".join(r["flags"] for r in runs) + " |",
                  "| --- | " + " | ".join("---" for _ in runs) + " |"]
        for name in runs[0]["formulations"]:
            cells = [f"{mark(format(r['formulations'][name]['vs_fp32'], '.2f'), cores)} ({r['formulations'][name]['weight_bytes_per_s'] / 1e9:.1f})"
                     for r in runs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"


if __name__ == "__main__":
    k, n, batch, rounds = (int(a) for a in sys.argv[1:5])
    print(json.dumps(measure(k, n, batch, rounds)))
