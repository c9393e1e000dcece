"""The project's questions, each answered by an experiment anyone can rerun (``jaxlm experiments NAME``).

One module per question: ``run(full, runs)`` trains and measures (its run folders under
``runs``) and returns the JSON saved as ``experiments/results/NAME.json`` (plots beside it);
``tables(result)`` turns that JSON into the markdown tables of ``REPORT.md``. Questions 6-8 share
one experiment, the ULMFiT ablation (``ulmfit``), and its JSON; question 5 gathers the four
smaller-model experiments (``smaller-distill``, ``smaller-adaptive``, ``smaller-prune``,
``smaller-heads``), each run on its own.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# Experiment name -> what runs it: a module, or "module:KEY" for the entry KEY of that module's
# EXPERIMENTS; each has run(full, runs) -> the JSON it saves, tables(result) -> REPORT.md's
# tables, and optionally RESULT, the name of its JSON when not the experiment's (q6-q8: "ulmfit").
EXPERIMENTS = {
    "q1": "experiments.q1_gpt_vs_gpt2",
    "q2": "experiments.q2_gpt_vs_bert",
    "q3": "experiments.q3_bert_vs_albert",
    "q4": "experiments.q4_sharing_speed",
    "q5": "experiments.q5_cheaper_inference",
    "q6": "experiments.ulmfit_methods:q6",
    "q7": "experiments.ulmfit_methods:q7",
    "q8": "experiments.ulmfit_methods:q8",
    "ulmfit": "experiments.ulmfit_methods:ulmfit",
    "long-documents": "experiments.long_documents",
    "smaller-distill": "experiments.smaller_models:distill",
    "smaller-adaptive": "experiments.smaller_models:adaptive",
    "smaller-prune": "experiments.smaller_models:prune",
    "smaller-heads": "experiments.smaller_models:heads",
}


def experiment(name: str):
    """The experiment ``name`` runs (see ``EXPERIMENTS``) and the name of its saved JSON."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    module, _, key = EXPERIMENTS[name].partition(":")
    found = importlib.import_module(module)
    if key:
        found = found.EXPERIMENTS[key]
    return found, getattr(found, "RESULT", name)


def run_question(question: str, full: bool = False, report_only: bool = False, runs="runs/experiments") -> dict:
    """Run an experiment (its paper-sized configuration with ``full``; run folders under ``runs``),
    save its JSON and regenerate its tables in REPORT.md; with ``report_only``, regenerate them
    from the saved JSON without running anything. Returns where the JSON is and the tables filled."""
    from experiments import common

    found, result_name = experiment(question)
    if report_only:
        result = common.load(result_name)
    else:
        result = found.run(full=full, runs=Path(runs))
        common.save(result_name, result)
    filled = common.write_report(found.tables(result))
    return {"question": question, "results": str(common.RESULTS / f"{result_name}.json"), "report_tables": filled}
