"""Runs that span several processes (hosts): starting JAX's distributed runtime, and the little
the processes must agree on outside the train step.

Every process of a multi-host run calls :func:`initialize` before JAX touches a device. Where
the settings come from, first match wins:

1. explicit arguments (``scripts/train.py --coordinator HOST:PORT --num-processes N
   --process-id I``);
2. torchrun-style variables: ``WORLD_SIZE`` > 1 with ``RANK``, ``MASTER_ADDR`` and
   ``MASTER_PORT`` (the coordinator listens on ``MASTER_ADDR:MASTER_PORT``);
3. ``auto=True`` (``--distributed``), or SLURM with several tasks (``SLURM_NTASKS`` > 1): JAX
   finds the cluster itself (TPU VM pod slices, SLURM, Open MPI, Kubernetes).

Otherwise the run is one process and nothing is started. Afterwards every process has checked
that the coordinator runs as many processes as it was told, so a mistyped count fails at once,
naming both numbers, instead of hanging in the first collective.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

import jax
import numpy as np

log = logging.getLogger(__name__)


def settings_from_env(env: Mapping[str, str]) -> dict | None:
    """``jax.distributed.initialize`` arguments from a launcher's variables; ``{}`` to let JAX
    detect the cluster; None for a single-process run."""
    world = env.get("WORLD_SIZE")
    if world is not None and int(world) > 1:
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} is set but {', '.join(missing)} is not: set all of WORLD_SIZE, "
                             "RANK, MASTER_ADDR and MASTER_PORT, or none")
        return {"coordinator_address": f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
                "num_processes": int(world), "process_id": int(env["RANK"])}
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return {}
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = False, env: Mapping[str, str] = os.environ, timeout_s: int = 300) -> bool:
    """Start JAX's distributed runtime if this run spans several processes (see the module
    docstring); returns whether it did. Call it once, before anything uses a device."""
    explicit = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    given = {k: v for k, v in explicit.items() if v is not None}
    if given and len(given) < 3:
        missing = sorted(set(explicit) - set(given))
        raise ValueError(f"--{' --'.join(m.replace('_', '-') for m in missing)} missing: an explicit multi-process "
                         "run needs --coordinator, --num-processes and --process-id together")
    if given:
        settings = {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    else:
        settings = settings_from_env(env)
        if settings is None and auto:
            settings = {}
    if settings is None:
        return False
    if settings:
        _check(**settings)
    try:
        jax.distributed.initialize(**settings, initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:  # the runtime's connection errors are RuntimeErrors
        where = settings.get("coordinator_address", "the address JAX detected")
        raise ConnectionError(
            f"could not start the distributed runtime with the coordinator at {where} ({e}); check the address, that "
            "process 0 runs, and that every process was given the same process count"
        ) from e
    expected = settings.get("num_processes")
    if expected is not None and jax.process_count() != expected:
        raise ValueError(
            f"this process was started for {expected} processes, but the coordinator at "
            f"{settings['coordinator_address']} runs {jax.process_count()}: give every process the same "
            "--num-processes (WORLD_SIZE)"
        )
    log.info("process %d of %d, %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def _check(coordinator_address: str, num_processes: int, process_id: int) -> None:
    host, sep, port = coordinator_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"coordinator {coordinator_address!r} is not HOST:PORT (e.g. 10.0.0.2:1234)")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in 0..{num_processes - 1} (the process count is "
                         f"{num_processes}): number the processes 0, 1, ..., count - 1")


def gather_json(value) -> list:
    """A JSON-able value from every process, in process order (a collective: every process calls
    it at the same point). The encoded text is padded to a power of two, so the gather compiles
    for a handful of lengths only."""
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([blob.size], np.int32)).reshape(-1)
    padded = np.zeros(1 << max(10, int(lengths.max() - 1).bit_length()), np.uint8)
    padded[: blob.size] = blob
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, lengths)]


def agree(ok: bool) -> bool:
    """Whether process 0 says ``ok`` (a collective: every process calls it at the same point)."""
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
