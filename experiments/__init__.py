"""The project's questions, each answered by an experiment anyone can rerun (``scripts/experiments.py``).

One module per question: ``run(scale)`` trains and measures, writes ``experiments/results/qN.json``
(and plots); ``tables(result)`` turns that JSON into the markdown tables of ``REPORT.md``.
"""

# Each question's module: run(scale) -> the JSON it saves, tables(result) -> REPORT.md's tables.
QUESTIONS = {
    "q1": "experiments.q1_gpt_vs_gpt2",
    "q2": "experiments.q2_gpt_vs_bert",
    "q3": "experiments.q3_bert_vs_albert",
    "q4": "experiments.q4_sharing_speed",
    "q5": "experiments.q5_cheaper_inference",
    "q6": "experiments.ulmfit_methods",
    "q7": "experiments.ulmfit_methods",
    "q8": "experiments.ulmfit_methods",
}
