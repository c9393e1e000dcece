"""The reference contenders' processes: ``Worker`` starts ``python -m bench.workers <kind>`` and
steps it on command (one JSON line each way per message); ``reference_python`` creates the Flax
reference's virtual environment (transformers 4.57.6 with our jax, flax and optax) on first use.
"""

from __future__ import annotations

if __name__ == "__main__":  # a worker process: malloc before numpy and JAX start threads
    from train.malloc import retain_freed_memory

    WORKER_ALLOCATOR = retain_freed_memory()

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.spec import BenchSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_VENV = REPO_ROOT / ".cache" / "bench-venv"
REFERENCE_TRANSFORMERS = "4.57.6"
RESULT_TAG = "BENCHMARK_RESULT "


def reference_requirements() -> list[str]:
    """Pins of the Flax reference environment: transformers 4.57.6 with our jax, flax and optax.

    flax 0.12.x (ours) was checked to load and train transformers 4.57.6's Flax GPT-2.
    """
    from importlib.metadata import version

    return [
        f"transformers=={REFERENCE_TRANSFORMERS}",
        f"jax=={version('jax')}",
        f"jaxlib=={version('jaxlib')}",
        f"flax=={version('flax')}",
        f"optax=={version('optax')}",
    ]


def _env_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def reference_python(path: str | os.PathLike | None = None, create: bool = True, log=sys.stderr) -> Path:
    """The Python of the Flax reference environment: ``path`` (a venv folder or an interpreter),
    default ``.cache/bench-venv``; a missing venv folder is created with ``python -m venv`` and
    ``pip install`` of :func:`reference_requirements` (needs PyPI)."""
    path = Path(path) if path else DEFAULT_REFERENCE_VENV
    if path.is_file():
        return path
    python = _env_python(path)
    marker = path / "bench-requirements.txt"
    wanted = "\n".join(reference_requirements())
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not create:
        raise FileNotFoundError(f"no reference environment at {path}; run with --compare-reference to create it")
    print(f"creating the reference environment in {path}: {wanted.replace(chr(10), ', ')}", file=log, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *reference_requirements()], check=True, stdout=log, stderr=log)
    marker.write_text(wanted)
    return python


class Worker:
    """A reference contender in its own process (``python -m bench.workers <kind>``, run from the
    repository root), stepped on command: one JSON line each way per message."""

    def __init__(self, python: str | os.PathLike, kind: str, payload: dict, allocator: str = "default",
                 timeout: float = 1800):
        env = dict(os.environ)
        env.setdefault("TRANSFORMERS_VERBOSITY", "error")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = str(REPO_ROOT)  # only our repository: nothing from the calling environment
        env["JAXLM_MALLOC"] = allocator  # read by train.malloc when the worker starts
        self.kind, self.python, self.timeout = kind, python, timeout
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [str(python), "-m", "bench.workers", kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, cwd=REPO_ROOT, env=env, text=True,
        )
        self.request(payload)  # the worker answers once its step is compiled and warmed up

    def request(self, message) -> Any:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG):])
        self.proc.wait(self.timeout)
        self.stderr.seek(0)
        raise RuntimeError(f"{self.kind} worker ({self.python}) failed with exit code {self.proc.returncode}:\n"
                           f"{self.stderr.read()[-5000:]}")

    def step(self, workload: str | None = None) -> dict:
        """Time one call: the train step, or the named workload of an inference contender."""
        return self.request("step" if workload is None else {"step": workload})

    def finish(self) -> dict:
        result = self.request("finish")
        self.proc.stdin.close()
        self.proc.wait(self.timeout)
        self.stderr.close()
        return result


def _contender(kind: str, payload: dict):
    """The worker's contender and the function that gives its final result."""
    if kind == "flax-generate":
        from bench.flax_reference import flax_generate

        workloads = flax_generate(payload)
        return workloads, workloads.result
    if kind == "torch-inference":
        from bench.torch_reference import torch_inference

        workloads = torch_inference(payload)
        return workloads, workloads.result
    spec = BenchSpec(**payload["spec"])
    if kind == "flax-reference":
        from bench.flax_reference import flax_reference_step

        contender = flax_reference_step(spec, payload["hf_config"], payload["optimizer"])
    elif kind == "torch-reference":
        from bench.torch_reference import torch_reference_step

        contender = torch_reference_step(spec, payload["hf_config"], payload["optimizer"], threads=payload.get("threads"),
                                         adamw_impl=payload.get("torch_adamw", "fused"))
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    return contender, lambda: contender.result(spec, payload["flops"], payload["peak_flops_per_s"])


def _worker_main(kind: str) -> None:
    """The worker side of :class:`Worker`: a payload, then ``"step"`` (or ``{"step": workload}``)
    commands, then ``"finish"``."""
    def reply(obj):
        print(RESULT_TAG + json.dumps(obj), flush=True)

    contender, finish = _contender(kind, json.loads(sys.stdin.readline()))
    reply("ready")
    for line in sys.stdin:
        command = json.loads(line)
        if command == "step":
            reply(contender.step())
        elif isinstance(command, dict) and "step" in command:
            reply(contender.step(command["step"]))
        elif command == "finish":
            reply({**finish(), "allocator": WORKER_ALLOCATOR})
            return


if __name__ == "__main__":
    _worker_main(sys.argv[1])
