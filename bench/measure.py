"""How a contender is timed: wall and CPU time per call, other processes' CPU use, peak memory, peak FLOP/s.

jax and torch are imported inside the functions that use them: the PyTorch worker imports this
module and must not load JAX (its memory is measured).

Peak memory
    On accelerators, the device's ``memory_stats()["peak_bytes_in_use"]``. On CPU (no device
    statistics), the process's resident-set high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs`` right before the contender starts, after ``malloc_trim``, so earlier
    work does not count) minus the resident set at that moment: ``peak_rss_delta_bytes`` covers
    init + compile + steps, ``steps_peak_rss_delta_bytes`` the high-water mark of the timed steps
    alone (heap trimmed and mark reset after the warmup) over the same baseline, i.e. the steady
    training footprint (state, gradients, activations). ``xla_memory`` adds XLA's own buffer
    accounting of the compiled step (arguments, outputs, aliased, temporaries).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.spec import BenchSpec


def _best_time(f, args, repeats: int) -> float:
    """The fastest of ``repeats`` calls of the jitted ``f`` after one compiling call, in seconds."""
    f(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak_flops(dtype: str = "float32", n: int | None = None, repeats: int = 10) -> dict:
    """The best FLOP/s of an ``n x n @ n x n`` matmul under ``jax.jit`` on the default device."""
    import jax
    import jax.numpy as jnp

    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
    best = _best_time(jax.jit(jnp.matmul), (a, b), repeats)
    return {"flops_per_s": 2 * n**3 / best, "n": n, "dtype": dtype, "repeats": repeats}


def matvec_bandwidth(n: int = 8192, repeats: int = 10) -> dict:
    """Bytes/s at which a jitted fp32 ``[n, n] @ [n]`` product reads its matrix (best of ``repeats``):
    the memory-bandwidth limit of batch-1 decoding, which reads every weight once per token. The
    default matrix (256 MB) is far larger than any CPU cache."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (n,), jnp.float32)
    best = _best_time(jax.jit(jnp.matmul), (a, x), repeats)
    return {"bytes_per_s": a.nbytes / best, "matrix": [n, n], "dtype": "float32", "repeats": repeats}


def kernels_2d(params, widths) -> list:
    """Every projection kernel of a transformer's parameters as the [in, out] matrix its product
    reads: the leading axes whose sizes multiply to one of ``widths`` (d_model, d_ff) are the
    input, the rest the output ([embed, heads, kv] -> [embed, heads * kv])."""
    import jax
    import numpy as np

    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if getattr(path[-1], "key", None) != "kernel" or leaf.ndim < 2:
            continue
        prefix = np.cumprod(leaf.shape)
        k = next(i + 1 for i, size in enumerate(prefix) if size in widths)
        out.append(leaf.reshape(int(prefix[k - 1]), -1))
    return out


def bare_products_s(matrices, repeats: int = 10) -> float:
    """The best time of one jitted call computing ``x @ W`` for a single row ``x`` and every matrix
    ``W`` of ``matrices``: batch-1 decoding's weight reads with nothing else (no attention,
    LayerNorm, cache or loop), the bound XLA's matrix-vector products set on it here."""
    import jax
    import jax.numpy as jnp

    def products(ws):
        return sum((jnp.ones((1, w.shape[0]), w.dtype) @ w)[0, 0] for w in ws)

    return _best_time(jax.jit(products), (list(matrices),), repeats)


def torch_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """The same measurement with torch (fp32), for comparing the libraries' matmuls."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def _proc_status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class HostMemory:
    """Peak resident-set growth of this process over a stretch of work (Linux ``/proc``)."""

    def __init__(self):
        self.baseline = None
        self.resettable = False

    def _reset_peak(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    def _peak(self) -> int:
        peak = _proc_status("VmHWM")
        if peak is None:  # no /proc: ru_maxrss (kilobytes on Linux, bytes on macOS)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak *= 1 if sys.platform == "darwin" else 1024
        return peak

    def start(self) -> None:
        release_free_memory()
        self.resettable = self._reset_peak()
        self.baseline = _proc_status("VmRSS") or self._peak()

    def checkpoint(self) -> int:
        """Peak growth over the baseline since the last reset; then trim the heap and reset."""
        delta = self._peak() - self.baseline
        release_free_memory()
        self._reset_peak()
        return delta


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so the resident set tracks live
    memory rather than what the allocator kept from earlier work (compilation, the first step)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


UNDER_LOAD_CORES = 0.2  # other processes' CPU use above which a ratio is marked as measured under load


class CpuContention:
    """CPU time that other processes used while this one was measured (from ``/proc/stat``), in
    cores: the machine is shared, and anything above ~0.1 core makes the wall times suspect. The
    process's own time, that of its finished children (a measurement run as a subprocess) and
    that of the processes ``pids`` (the contenders' workers) do not count. ``/proc/stat`` counts
    in ticks of 10 ms: measure stretches of a second or more."""

    SHORTEST_S = 0.5

    def __init__(self, pids=()):
        self.pids = tuple(pids)

    def _pids_s(self) -> float:
        total = 0
        for pid in self.pids:
            try:  # utime and stime, the 14th and 15th fields, after the command's parenthesis
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def _busy_s(self) -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def _own_s(self) -> float:
        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy_s(), self._own_s() + self._pids_s()

    def stop(self) -> float | None:
        busy, wall = self._busy_s(), time.perf_counter() - self.t0
        if busy is None or self.busy0 is None or wall < self.SHORTEST_S:  # a few ticks say nothing
            return None
        return max(busy - self.busy0 - (self._own_s() + self._pids_s() - self.own0), 0.0) / wall


def load(result) -> float | None:
    """The cores other processes used while a benchmark ran: its top-level
    ``other_processes_cpu_cores`` (measured over all its timed rounds, the contenders excluded),
    else the largest such figure anywhere in it."""
    if isinstance(result, dict) and isinstance(result.get("other_processes_cpu_cores"), (int, float)):
        return float(result["other_processes_cpu_cores"])
    found = []

    def walk(x, counted=False):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, counted or k == "other_processes_cpu_cores")
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v, counted)
        elif counted and isinstance(x, (int, float)):
            found.append(float(x))

    walk(result)
    return max(found) if found else None


def under_load(cores: float | None) -> bool:
    return cores is not None and cores > UNDER_LOAD_CORES


def load_note(cores: float | None) -> str:
    """The load line of a benchmark's table: what other processes used, and whether its ratios
    are marked (``*``) as measured under load."""
    if cores is None:
        return "other processes' CPU use not measured (timed for under half a second)"
    if under_load(cores):
        return (f"MEASURED UNDER LOAD: other processes used {cores:.2f} cores (over {UNDER_LOAD_CORES}); "
                "ratios marked * measure the load as much as the code")
    return f"other processes used {cores:.2f} cores (at most {UNDER_LOAD_CORES}: an idle machine)"


def mark(text: str, cores: float | None) -> str:
    """A ratio's cell, with ``*`` when it was measured under load."""
    return f"{text}*" if text and under_load(cores) else text


def xla_memory(compiled) -> dict | None:
    """XLA's own buffer accounting of a compiled step (bytes)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    out = {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}
    if {"argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes"} <= set(out):
        out["total_live_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                   - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def device_peak_bytes() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _cpu_times() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def time_call(call: Callable[[], Any]) -> dict:
    """One call (which must block on its result): wall time, this process's CPU seconds (user,
    system) and the other processes' CPU use meanwhile, in cores."""
    contention = CpuContention()
    contention.start()
    u0, s0 = _cpu_times()
    t0 = time.perf_counter()
    call()
    wall = time.perf_counter() - t0
    u1, s1 = _cpu_times()
    return {"time": wall, "user": u1 - u0, "system": s1 - s0, "other_cores": contention.stop()}


def summarize_times(samples: list[dict], tokens_per_step: int) -> dict:
    times = [x["time"] for x in samples]
    others = [x["other_cores"] for x in samples if x["other_cores"] is not None]
    median = statistics.median(times)
    return {
        "other_processes_cpu_cores": statistics.fmean(others) if others else None,
        "step_cpu_user_s": statistics.median(x["user"] for x in samples),
        "step_cpu_system_s": statistics.median(x["system"] for x in samples),
        "step_s": median,
        "step_s_mean": statistics.fmean(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "step_times_s": times,
        "tokens_per_s": tokens_per_step / median,
    }


class Contender:
    """A compiled train step ready to time. ``call()`` runs one step and blocks on it;
    ``describe()`` returns what the result reports besides the times (set-up costs, last loss).
    Creating one runs the untimed warm-up steps."""

    def __init__(self, call: Callable[[], None], describe: Callable[[], dict], memory: HostMemory, warmup: int):
        self.call, self.describe, self.memory = call, describe, memory
        for _ in range(warmup):
            call()
        self.setup_peak = memory.checkpoint()
        self.samples: list[dict] = []

    def step(self) -> dict:
        sample = time_call(self.call)
        self.samples.append(sample)
        return sample

    def result(self, spec: BenchSpec, flops: dict, peak_flops_per_s: float | None) -> dict:
        steps_peak = self.memory.checkpoint()
        out = {
            **self.describe(),
            **summarize_times(self.samples, spec.tokens_per_step),
            "peak_rss_delta_bytes": max(self.setup_peak, steps_peak),
            "steps_peak_rss_delta_bytes": steps_peak,
        }
        return add_mfu(out, flops, peak_flops_per_s)


class Workloads:
    """Named calls to time (each blocks on its result), for contenders that run several kinds of
    work (e.g. decoding at two batch sizes, and an encoder). Creating one runs each call
    ``warmup`` times untimed; ``step(name)`` times one call; ``result()`` gives each workload's
    median, its samples and the other processes' CPU use, with ``describe()``'s fields."""

    def __init__(self, calls: dict[str, Callable[[], Any]], describe: Callable[[], dict] = dict, warmup: int = 1):
        self.calls, self.describe = calls, describe
        for call in calls.values():
            for _ in range(warmup):
                call()
        self.samples: dict[str, list[dict]] = {name: [] for name in calls}

    def step(self, name: str) -> dict:
        sample = time_call(self.calls[name])
        self.samples[name].append(sample)
        return sample

    def result(self) -> dict:
        out = {}
        for name, samples in self.samples.items():
            times = [x["time"] for x in samples]
            others = [x["other_cores"] for x in samples if x["other_cores"] is not None]
            out[name] = {
                "median_s": statistics.median(times) if times else None,
                "times_s": times,
                "other_processes_cpu_cores": statistics.fmean(others) if others else None,
            }
        return {**self.describe(), "workloads": out}


def interleaved_rounds(contenders: dict, workloads: list[str], rounds: int, skip=lambda name, workload: False,
                       log=None) -> list[dict]:
    """Time ``rounds`` rounds, each one call of every workload of every contender (anything with
    ``step(workload)``: ``Workloads`` or a worker) but those ``skip`` names, never two at once and
    the lead rotating round by round, so a change in the machine's speed hits all of them alike
    -> per round ``{workload: {contender: seconds}}``."""
    names, out = list(contenders), []
    for r in range(rounds):
        if log is not None:
            print(f"round {r + 1}/{rounds}", file=log, flush=True)
        lead = r % len(names)
        timed: dict[str, dict] = {}
        for workload in workloads:
            for name in names[lead:] + names[:lead]:
                if not skip(name, workload):
                    timed.setdefault(workload, {})[name] = contenders[name].step(workload)["time"]
        out.append(timed)
    return out


def add_mfu(result: dict, flops: dict, peak_flops_per_s: float | None) -> dict:
    achieved = flops["flops_per_token"] * result["tokens_per_s"]
    result["model_flops_per_s"] = achieved
    result["mfu"] = achieved / peak_flops_per_s if peak_flops_per_s else None
    return result


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def versions(*names) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict:
    import jax

    dev = jax.local_devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu_count": cpu_count(),
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": versions("jax", "jaxlib", "flax", "optax", "numpy"),
    }
