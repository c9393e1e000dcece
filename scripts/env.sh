# The environment set-up that scripts/main.sh and scripts/test.sh share: `.venv` with this
# project installed (editable, with its `jaxlm` command) and the pip extras named in
# JAXLM_EXTRAS (e.g. "test"), at the versions constraints.txt pins.
# Sourced, not run: it activates the venv in the calling shell.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet -c constraints.txt -e ".${JAXLM_EXTRAS:+[$JAXLM_EXTRAS]}"
