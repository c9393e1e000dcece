"""Every shell command in README.md's code blocks runs, in the README's order, at tiny sizes.

Each command is a test of its own, named by its line. The commands run in one scratch home
(``~/.cache/jaxlm`` is the test's) and one working folder, so a command that needs an earlier
one's output (the tokenizer, the main job's run) finds it. The test appends the flags that make
the work tiny (``TINY``: ``--set`` changes, fewer tokens); a command marked "[not run by the README
test: REASON]" is skipped with that reason. ``jaxlm`` commands run in this process (as the
console script would: ``jaxlm.cli.run`` on the words, ``~`` expanded), sharing its compilations.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"\[not run by the README test: ([^\]]+)\]")

TINY_MODEL = ["--set", "model.n_layer=2", "--set", "model.d_model=32", "--set", "model.n_head=4", "--set", "model.d_ff=64"]
TINY_RUN = ["--set", "steps=2", "--set", "log.eval_every=2", "--set", "checkpoint.every=2", "--set",
            "log.eval_max_batches=1", "--set", "data.batch_size=4", "--set", "optimizer.warmup_steps=0"]
TINY = {  # subcommand -> the flags the test appends
    "tokenizer": ["--vocab-size", "600", "--input-sentence-size", "3000"],
    "train": TINY_RUN + TINY_MODEL,
    "distill": TINY_RUN,
    "evaluate": ["--set", "log.eval_max_batches=1", "--set", "data.batch_size=4"],
    "generate": ["--max-new-tokens", "4"],
    "finetune": ["--set", "lm.steps=10", "--set", "classifier.steps=10", "--set", "data.batch_size=4", "--set",
                 "data.seq_len=32", "--set", "log.eval_max_batches=1"],
    "prune": ["--batches", "1"],
}
PRUNING = ["--set", "optimizer.pruning.begin_step=0", "--set", "optimizer.pruning.end_step=2", "--set",
           "optimizer.pruning.every=1"]


def readme_commands() -> list[tuple[int, str, str | None]]:
    """``(line, command, reason it is not run or None)`` of every command in the bash blocks."""
    out, block, pending = [], False, None
    for number, line in enumerate(ROOT.joinpath("README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block or not line.strip():
            continue
        start, text = pending or (number, "")
        text += line.rstrip("\\").rstrip() + " "
        pending = (start, text) if line.endswith("\\") else None
        if pending is None:
            mark = MARK.search(text)
            out.append((start, _without_comment(MARK.sub("", text)).strip(), mark.group(1) if mark else None))
    return out


def _without_comment(text: str) -> str:
    """``text`` up to a ``#`` that starts a shell comment (outside quotes, after a space)."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i]
    return text


def tiny(command: str) -> str:
    """``command`` with the flags that make its work tiny appended."""
    words = shlex.split(command)
    if words[0] != "jaxlm":
        return command
    extra = TINY.get(words[1], [])
    if words[1] == "train" and any(w.startswith("optimizer.pruning") for w in words):
        extra = extra + PRUNING
    return f"{command} {shlex.join(extra)}" if extra else command


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A scratch home (with the npm packages already downloaded, when this machine has them) and
    working folder, made this process's HOME and working directory for the module."""
    home, work = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("work")
    cached = Path(os.environ.get("JAXLM_CACHE") or Path.home() / ".cache" / "jaxlm") / "npm"
    if cached.is_dir():
        shutil.copytree(cached, home / ".cache" / "jaxlm" / "npm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.delenv("JAXLM_CACHE", raising=False)
        patch.chdir(work)
        yield work


COMMANDS = readme_commands()


def test_the_readme_has_commands_and_both_set_up_commands():
    commands = [c for _, c, _ in COMMANDS]
    assert "bash scripts/main.sh" in commands and "bash scripts/test.sh" in commands
    assert sum(reason is None for _, _, reason in COMMANDS) >= 15
    assert all(c.startswith("jaxlm ") for c, reason in ((c, r) for _, c, r in COMMANDS) if reason is None)


@pytest.mark.slow
@pytest.mark.parametrize("line,command,reason", COMMANDS, ids=[f"line{n}-{' '.join(c.split()[:2])}" for n, c, _ in COMMANDS])
def test_readme_command(line, command, reason, place):
    if reason:
        pytest.skip(reason)
    from jaxlm.cli import run

    words = [os.path.expanduser(w) for w in shlex.split(tiny(command))]
    try:
        run(words[1:])
    except SystemExit as e:
        raise AssertionError(f"README line {line}: {command} exited with status {e.code}") from None
