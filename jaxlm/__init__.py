"""The ``jaxlm`` command line: one entry point whose subcommands speak one language.

    jaxlm prepare sotu
    jaxlm tokenizer ~/.cache/jaxlm/sotu/train.jsonl --out ~/.cache/jaxlm/sotu/spm8k --vocab-size 8192
    jaxlm train --config gpt2-mini-sotu --set steps=100 --out runs/my-run
    jaxlm evaluate runs/my-run --data ~/.cache/jaxlm/sotu --split validation

Every subcommand is argument parsing over the library; ``jaxlm.cli`` holds what they share.
``python -m jaxlm`` is the same command.
"""
