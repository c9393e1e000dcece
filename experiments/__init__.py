"""The project's questions, each answered by an experiment anyone can rerun (``scripts/experiments.py``).

One module per question: ``run(scale)`` trains and measures, writes ``experiments/results/qN.json``
(and plots); ``tables(result)`` turns that JSON into the markdown tables of ``REPORT.md``.
"""
