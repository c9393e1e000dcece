"""Keep freed memory in the process, so XLA's CPU steps stop page-faulting their temporaries in.

XLA's CPU runtime allocates a step's temporary buffers (activations, logits, gradients: a
gigabyte for GPT-2 at batch 2 x 256) when the step starts and frees them when it ends. glibc serves
blocks that large with ``mmap`` and returns them to the kernel on ``free``, so every step maps
fresh pages, and the kernel zeroes each one on first touch, in system time the step pays for
(``jaxlm benchmark`` reports it per step). With one malloc arena, no ``mmap`` for large blocks
and no trimming, the freed buffers stay in the heap and the next step reuses them.

This changes the allocator of the whole process, so it applies only where the step runs on the
CPU and only before JAX starts its threads (each thread binds to an arena on its first
allocation). ``JAXLM_MALLOC=default`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def jax_runs_on_cpu() -> bool:
    """Whether JAX will pick the CPU: ``JAX_PLATFORMS`` says so, or no accelerator plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def retain_freed_memory() -> str:
    """Configure glibc malloc as described above; call before the first JAX computation.

    Returns what was done: ``"retained"``, or why not (another C library, an accelerator, or
    ``JAXLM_MALLOC=default``).
    """
    if os.environ.get("JAXLM_MALLOC", "").lower() == "default":
        return "default (JAXLM_MALLOC=default)"
    if not jax_runs_on_cpu():
        return "default (JAX runs on an accelerator)"
    if not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
        return "default (not glibc)"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
    if not all(libc.mallopt(param, value) for param, value in settings):
        return "default (mallopt refused)"
    return "retained"
