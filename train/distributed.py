"""Runs that span several processes (hosts): starting JAX's distributed runtime, and the little
the processes must agree on outside the train step.

Every process of a multi-host run calls :func:`initialize` before JAX touches a device. Where
the settings come from, first match wins:

1. explicit arguments (``jaxlm train --coordinator HOST:PORT --num-processes N
   --process-id I``);
2. torchrun-style variables: ``WORLD_SIZE`` > 1 with ``RANK``, ``MASTER_ADDR`` and
   ``MASTER_PORT`` (the coordinator listens on ``MASTER_ADDR:MASTER_PORT``);
3. ``auto=True`` (``--distributed``), or SLURM with several tasks (``SLURM_NTASKS`` > 1): JAX
   finds the cluster itself (TPU VM pod slices, SLURM, Open MPI, Kubernetes).

Otherwise the run is one process and nothing is started. With an explicit address (1, 2) the
processes first compare what they were told over a plain TCP connection to the coordinator's
port (:func:`handshake`), so a mistyped count or a repeated id fails in seconds on every
process, naming both numbers, instead of hanging until JAX's start-up timeout and aborting.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
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
        handshake(**settings, timeout_s=timeout_s)
    try:
        jax.distributed.initialize(**settings, initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:  # the runtime's connection errors are RuntimeErrors
        where = settings.get("coordinator_address", "the address JAX detected")
        raise ConnectionError(
            f"could not start the distributed runtime with the coordinator at {where} ({e}); check the address, that "
            "process 0 runs, and that every process was given the same process count"
        ) from e
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


def handshake(coordinator_address: str, num_processes: int, process_id: int, *, timeout_s: float = 300) -> None:
    """Check that every process was told the same process count and its own id, before JAX's
    runtime starts (JAX would wait for the count it was told until its timeout, then abort).

    Process 0 listens on the coordinator's port until the other count - 1 processes have sent
    it their (count, id), or one disagrees; it answers every one that came with its verdict,
    and frees the port for JAX's coordinator once they have hung up (so the port is not left
    in TIME_WAIT there). The others connect, retrying while process 0 starts, and wait for the
    verdict. A disagreement is a ValueError with the same one line on each process involved.
    """
    host, _, port = coordinator_address.rpartition(":")
    if process_id == 0:
        _judge(int(port), num_processes, coordinator_address, timeout_s)
    else:
        _ask(host.strip("[]"), int(port), num_processes, process_id, coordinator_address, timeout_s)


def _receive(conn: socket.socket) -> dict | None:
    """One JSON object sent as one line; None for anything else (not our protocol, or hung up)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _disagreement(count: int, told: dict[int, int], their_count, their_id) -> str | None:
    """What is wrong with a process that says it is ``their_id`` of ``their_count``, given the
    ids already heard (``told``); None if nothing."""
    if their_count != count:
        return (f"process {their_id} was told {their_count} processes, process 0 was told {count}: give every "
                "process the same --num-processes (WORLD_SIZE)")
    if their_id == 0 or their_id in told:
        return (f"two processes were told process id {their_id}: give each process its own --process-id (RANK) "
                f"in 0..{count - 1}")
    return None


def _judge(port: int, count: int, where: str, timeout_s: float) -> None:
    """Process 0's side of :func:`handshake`."""
    try:
        server = (socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
                  if socket.has_dualstack_ipv6() else socket.create_server(("", port)))
    except OSError as e:
        raise OSError(f"process 0 cannot listen on port {port} for the coordinator {where} ({e.strerror}): give "
                      "--coordinator a free port") from None
    deadline = time.monotonic() + timeout_s
    told, conns, problem, error = {}, [], None, ValueError
    with server:
        try:
            while len(told) < count - 1 and problem is None:
                server.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    error, problem = TimeoutError, (f"only {len(told)} of the other {count - 1} processes reached the coordinator {where} "
                               f"within {timeout_s:g} s: start all {count} processes, each with --coordinator {where}")
                    break
                conn.settimeout(5)
                try:
                    said = _receive(conn)
                except OSError:
                    said = None
                if not (said and isinstance(said.get("num_processes"), int) and isinstance(said.get("process_id"), int)):
                    conn.close()  # not one of ours: a port scanner, or a stray client
                    continue
                conns.append(conn)
                problem = _disagreement(count, told, said["num_processes"], said["process_id"])
                told[said["process_id"]] = said["num_processes"]
            for conn in conns:
                conn.sendall(json.dumps({"num_processes": count, "problem": problem}).encode() + b"\n")
            for conn in conns:
                try:
                    conn.recv(1)  # returns when the other side hangs up
                except OSError:
                    pass  # it did not within 5 s: the port is freed all the same
        finally:
            for conn in conns:
                conn.close()
    if problem:
        raise error(problem)


def _ask(host: str, port: int, count: int, process_id: int, where: str, timeout_s: float) -> None:
    """The side of :func:`handshake` of every process but 0."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=5)
            break
        except socket.gaierror as e:
            raise OSError(f"cannot resolve the coordinator's host {host!r} ({e.strerror}): check --coordinator") from None
        except OSError:  # refused or unreachable: process 0 is not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answered at the coordinator {where} within {timeout_s:g} s: start "
                                   f"process 0 with --coordinator {where}") from None
            time.sleep(0.2)
    with conn:
        # Process 0 answers once every process has come, within timeout_s of its start (which
        # was before this connection was accepted).
        conn.settimeout(timeout_s)
        try:
            conn.sendall(json.dumps({"num_processes": count, "process_id": process_id}).encode() + b"\n")
            verdict = _receive(conn)
        except TimeoutError:
            raise TimeoutError(f"process 0 at {where} did not answer within {timeout_s:g} s") from None
        except OSError:
            verdict = None
    if verdict is None or "problem" not in verdict:
        raise ConnectionError(f"the coordinator {where} hung up without a verdict: process 0 stopped (its message says "
                              "why), or another program has that port")
    if verdict["problem"]:
        raise ValueError(verdict["problem"])

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
