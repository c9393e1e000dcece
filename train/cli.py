"""What every command-line script shares: expected errors as one line, exit status 2.

An expected error is bad input the user can fix: a bad config or ``--set`` value, a missing or
refused folder, a corrupt checkpoint, a failed download. ``run`` prints its message (which says
how to fix it) without a traceback and exits with status 2; ``--debug`` on any script shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from typing import Callable


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a command after it saved its work (training: the current step), so that
    rerunning the same command resumes. Its message says so; ``run`` exits with status 0."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """ValueError: bad values and files; OSError: missing, refused or unreadable files and
    downloads; the checkpoints' and the loop's own errors."""
    from train.checkpoint import CheckpointError
    from train.loop import NonFiniteLoss

    return (ValueError, OSError, CheckpointError, NonFiniteLoss)


def _drop_abandoned_async_reports(unraisable) -> None:
    """When an orbax restore fails, the reads still in flight are abandoned, and each reports an
    exception nobody can catch: when it finishes after orbax has closed its event loop
    (RuntimeError: Event loop is closed), or when its coroutine is garbage-collected (orbax's
    error again, with a 60-line TensorStore spec). Dozens of tracebacks that repeat the failure
    already reported; anything else unraisable is reported as usual."""
    closed_loop = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
    if not (closed_loop or inspect.iscoroutine(unraisable.object)):
        sys.__unraisablehook__(unraisable)


def quiet_libraries() -> None:
    """Keep library chatter (orbax's and absl's logging, asyncio tracebacks of aborted saves and
    restores, deprecation warnings) off the terminal, so a user sees our messages."""
    for name in ("absl", "orbax", "jax._src.xla_bridge", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # asyncio logs the same abandoned reads at ERROR ("Future exception was never retrieved").
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    sys.unraisablehook = _drop_abandoned_async_reports


def run(main: Callable[[list[str]], object], argv: list[str] | None = None) -> object:
    """Call ``main(argv)``; an expected error becomes one line on stderr and exit status 2, and
    Ctrl-C that stopped after saving (:class:`Interrupted`) one line and status 0.
    ``--debug`` also shows our modules' DEBUG records (e.g. the full error of a checkpoint
    that was set aside)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    quiet_libraries()
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO, force=True)
    if debug:
        logging.getLogger("train").setLevel(logging.DEBUG)
    try:
        return main(argv)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(0)
    except expected_errors() as e:
        if debug:
            raise
        message = str(e) or type(e).__name__
        print(f"error: {message}\n(run with --debug for the traceback)", file=sys.stderr)
        sys.exit(2)
