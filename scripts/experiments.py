"""Run one of the project's questions and regenerate its tables in REPORT.md.

    python scripts/experiments.py q1            # GPT vs GPT-2 ablation, sized for a 2-core CPU
    python scripts/experiments.py q1 --scale    # the larger configuration, for an accelerator
    python scripts/experiments.py q1 --report   # only regenerate REPORT.md's tables from the JSON

Questions 6, 7 and 8 share one experiment (the ULMFiT ablation) and its JSON; any of them runs it.

Results go to experiments/results/QUESTION.json (and .png plots); the tables in REPORT.md are
generated from that JSON.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import QUESTIONS  # noqa: E402
from train import cli  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", choices=sorted(QUESTIONS))
    parser.add_argument("--scale", action="store_true", help="the larger configuration (an accelerator)")
    parser.add_argument("--report", action="store_true", help="only regenerate REPORT.md from the saved JSON")
    args = parser.parse_args(argv)
    from experiments import common

    module = importlib.import_module(QUESTIONS[args.question])
    name = getattr(module, "RESULT", args.question)  # q6-q8 share one experiment and its JSON
    result = common.load(name) if args.report else module.run(scale=args.scale)
    filled = common.write_report(module.tables(result))
    summary = {"question": args.question, "results": str(common.RESULTS / f"{name}.json"),
               "report_tables": filled}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli.run(main)
