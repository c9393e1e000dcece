"""``python -m jaxlm COMMAND ...``: the same as the ``jaxlm`` console script."""

from jaxlm.cli import main

main()
