#!/usr/bin/env bash
# Train on GPUs. One machine: one process drives all its GPUs (JAX sees them all), and the mesh
# says how they share the work. Several machines: one process per machine, joined by JAX's
# distributed runtime; process 0's machine runs the coordinator.
#
#   bash scripts/launch_gpu.sh local CONFIG [--set PATH=VALUE ...]
#       e.g. bash scripts/launch_gpu.sh local gpt2-mini-sotu --set mesh.data=1 --set mesh.fsdp=-1
#   COORDINATOR=10.0.0.2:1234 NUM_NODES=4 NODE_RANK=0 bash scripts/launch_gpu.sh node CONFIG [...]
#       run once on every machine, NODE_RANK 0..NUM_NODES-1 (or use the torchrun-style variables
#       MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK, which jaxlm train reads itself)
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 scripts/launch_gpu.sh slurm CONFIG [...]
#       under SLURM (SLURM_NTASKS > 1), JAX reads the job's layout; srun starts one task per node
#
# The run folder must be on a filesystem every machine mounts: each process writes its own
# shards of every checkpoint. XLA_PYTHON_CLIENT_MEM_FRACTION (JAX's default is 0.75 of each
# GPU's memory) is raised to 0.9 unless set; the memory plan (jaxlm benchmark --mode memory
# --usable-fraction 0.9) assumes the same.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
mode=${1:?usage: $0 local|node|slurm CONFIG [--set PATH=VALUE ...]}
config=${2:?give a config name or .py file}
shift 2
case "$mode" in
  local)
    exec python -m jaxlm train --config "$config" "$@"
    ;;
  node)
    exec python -m jaxlm train --config "$config" --coordinator "${COORDINATOR:?host:port of node 0}" \
      --num-processes "${NUM_NODES:?}" --process-id "${NODE_RANK:?}" "$@"
    ;;
  slurm)
    exec srun python -m jaxlm train --config "$config" "$@"
    ;;
  *)
    echo "unknown mode $mode: local, node or slurm" >&2
    exit 2
    ;;
esac
