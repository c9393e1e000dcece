"""What every subcommand shares: its flags, its errors and its output.

- The same flag means the same thing everywhere: ``--out`` where the command writes (a run
  folder, a corpus folder, a tokenizer's prefix, a result file), ``--config`` the run config
  (a registered name or a .py file with ``get_config()``), ``--set PATH=VALUE`` a run config
  field by its dotted path (repeatable), ``--seed`` the seed, ``--debug`` tracebacks and debug
  logs. ``--help`` shows every default.
- An expected error is bad input the user can fix: a bad config or ``--set`` value, a missing
  or refused folder, a corrupt checkpoint, a failed download. It is printed as one line that
  says how to fix it, and the command exits with status 2; ``--debug`` shows the traceback.
  Anything else is a bug and keeps its traceback. Ctrl-C that stopped after saving
  (``train.loop.Interrupted``) prints one line and exits with status 0.
- Library chatter (orbax, absl, TensorStore, asyncio) is kept off the terminal.
- A command's result is printed as JSON (and written to ``--out`` where that is a result file).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
import warnings

# Subcommand -> its module in this package (each has HELP, add_arguments(parser), run(args) -> dict).
COMMANDS = {
    "prepare": "jaxlm.prepare",
    "tokenizer": "jaxlm.tokenizer",
    "train": "jaxlm.train",
    "finetune": "jaxlm.finetune",
    "distill": "jaxlm.distill",
    "evaluate": "jaxlm.evaluate",
    "generate": "jaxlm.generate",
    "harness": "jaxlm.harness",
    "convert": "jaxlm.convert",
    "prune": "jaxlm.prune",
    "benchmark": "jaxlm.benchmark",
    "experiments": "jaxlm.experiments",
}


class Parser(argparse.ArgumentParser):
    """argparse with defaults in the help and usage errors in one line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's default after its help, unless the help names it
    or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        empty = action.default in (None, False, [], argparse.SUPPRESS)
        if empty or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_out(parser, what: str, default=None, required: bool = False) -> None:
    parser.add_argument("--out", metavar="PATH", default=default, required=required, help=what)


def add_run_config(parser, default: str | None) -> None:
    """``--config`` and ``--set``: the run config and changes to it."""
    parser.add_argument("--config", default=default, metavar="NAME|FILE.py",
                        help="a registered run config (train.config.CONFIGS) or a .py file defining get_config()")
    add_set(parser)


def add_set(parser, what: str = "a run config field") -> None:
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help=f"change {what} by its dotted path, e.g. --set optimizer.learning_rate=1e-3 or "
                             "--set model.n_layer=2 (repeatable; values are JSON where they parse, else text)")


def add_seed(parser, default=None) -> None:
    parser.add_argument("--seed", type=int, default=default,
                        help="the random seed" + (" (default: the run config's)" if default is None else ""))


def run_config(args, base=None):
    """The run config of ``--config`` (or ``base``) with ``--set``, ``--out`` as its run_dir and
    ``--seed`` as its seed."""
    from train.config import apply_overrides, load_config

    config = apply_overrides(base if base is not None else load_config(args.config), args.set)
    changes = {}
    if getattr(args, "out", None):
        changes["run_dir"] = args.out
    if getattr(args, "seed", None) is not None:
        changes["seed"] = args.seed
    return config.replace(changes) if changes else config


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
    # The same abandoned reads, found unawaited when the interpreter exits.
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    import datasets

    datasets.disable_progress_bars()  # "Generating train split", "Tokenizing": a line per file


def parser() -> Parser:
    top = Parser(prog="jaxlm", description=__import__("jaxlm").__doc__)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, path in COMMANDS.items():
        module = importlib.import_module(path)
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.add_argument("--debug", action="store_true", help="show tracebacks and our modules' debug logs")
        sub.set_defaults(command_run=module.run)
    return top


def run(argv: list[str]) -> object:
    """Parse ``argv`` (a subcommand and its arguments) and run it in this process; an expected
    error becomes one line on stderr and exit status 2."""
    args = parser().parse_args(argv)
    quiet_libraries()
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO, force=True)
    if args.debug:
        logging.getLogger("train").setLevel(logging.DEBUG)
    from train.loop import Interrupted

    try:
        result = args.command_run(args)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(0)
    except expected_errors() as e:
        if args.debug:
            raise
        print(f"error: {str(e) or type(e).__name__}", file=sys.stderr)  # lines after the first list differences
        sys.exit(2)
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return result


ALLOCATOR = "default"  # what main() did to this process's malloc (the benchmarks report it)


def main(argv: list[str] | None = None) -> None:
    """The ``jaxlm`` console entry point: keeps freed memory in the process on CPUs
    (``train.malloc``; before JAX starts its threads), then runs the command (exit status 0, or
    2 for an expected error)."""
    global ALLOCATOR
    from train.malloc import retain_freed_memory

    ALLOCATOR = retain_freed_memory()
    run(list(sys.argv[1:] if argv is None else argv))
