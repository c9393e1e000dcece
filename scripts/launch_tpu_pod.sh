#!/usr/bin/env bash
# Train on a TPU VM pod slice: every host runs the same command, and JAX's distributed runtime
# (jaxlm train --distributed) finds the others from the TPU metadata.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash scripts/launch_tpu_pod.sh create   # optional
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash scripts/launch_tpu_pod.sh setup
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash scripts/launch_tpu_pod.sh train [--set PATH=VALUE ...]
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash scripts/launch_tpu_pod.sh stop
#
# Variables: REPO (git URL of this project), CONFIG (default scripts/configs/gpt2_medium_v4_32.py),
# ACCELERATOR (default v4-32), RUNTIME (default tpu-ubuntu2204-base), and DATA, TOKENIZER, RUN,
# which the config reads on each host. DATA, TOKENIZER and RUN must be the same path on every
# host, and RUN on a shared filesystem (e.g. a Filestore NFS share mounted at /mnt/shared by
# SHARED_MOUNT, a command run on every host during setup): each host writes its own shards of
# every checkpoint. Rerunning `train` resumes from the newest checkpoint; `stop` sends SIGTERM,
# which saves the current step on every host before exiting.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO=${REPO:-https://github.com/jaxlm/jaxlm.git}
CONFIG=${CONFIG:-scripts/configs/gpt2_medium_v4_32.py}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
on_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command="$1"; }
env_vars="DATA='${DATA:-}' TOKENIZER='${TOKENIZER:-}' RUN='${RUN:-}'"

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
    ;;
  setup)
    on_all "set -e; ${SHARED_MOUNT:-true}
      if [ -d jaxlm ]; then git -C jaxlm pull --ff-only; else git clone $REPO jaxlm; fi
      cd jaxlm && python3 -m venv .venv && . .venv/bin/activate
      pip install --quiet --upgrade pip && pip install --quiet -e . 'jax[tpu]'
      python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
    ;;
  train)
    shift
    # nohup: the run survives a dropped ssh connection; each host logs to ~/jaxlm/train.log.
    on_all "cd jaxlm && . .venv/bin/activate && export $env_vars && \
      nohup python -m jaxlm train --config $CONFIG --distributed $* > train.log 2>&1 &"
    ;;
  stop)
    on_all "pkill -TERM -f 'jaxlm train --config $CONFIG' || true"
    ;;
  *)
    echo "usage: $0 create|setup|train|stop" >&2
    exit 2
    ;;
esac
