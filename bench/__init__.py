"""Benchmarks: what is timed and how, the reference contenders and their worker processes.

- ``spec``: the train-step measurement's settings and batch (shared with the reference workers).
- ``measure``: timing, CPU contention, peak memory and peak FLOP/s.
- ``train_step``: our train step, alone or side by side with the references (``compare_reference``).
- ``flax_reference`` / ``torch_reference``: transformers' Flax and PyTorch GPT-2 train steps, and
  their generation (and PyTorch BertModel) for ``inference``.
- ``workers``: the references' processes and the Flax reference's virtual environment.
- ``sharing``: BERT vs ALBERT with and without cross-layer sharing.
- ``inference``: fp32, bf16 and int8 decoding and encoding against transformers' generate and
  BertModel, with parameter bytes, the memory-bandwidth limit and the quality change.
- ``formulations``: 16- and 8-bit matrix-vector products under XLA's CPU flags.

Run through ``jaxlm benchmark`` (``bench.modes``); the library (``models``, ``optim``, ``train``) never imports it.
"""
