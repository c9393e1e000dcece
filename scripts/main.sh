#!/usr/bin/env bash
# The main job, from a fresh clone: set up, fetch and prepare the State of the Union corpus,
# train a sentencepiece tokenizer and a small GPT-2 on a CPU, evaluate validation perplexity
# next to a unigram baseline, and continue a prompt. Rerunning resumes or reuses each stage.
# Extra arguments go to jaxlm train (e.g. --set steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/env.sh

CACHE=${JAXLM_CACHE:-$HOME/.cache/jaxlm}
RUN=${RUN:-runs/gpt2-mini-sotu}

jaxlm prepare sotu
if [ ! -f "$CACHE/sotu/spm8k.model" ]; then
  jaxlm tokenizer "$CACHE/sotu/train.jsonl" --out "$CACHE/sotu/spm8k" --vocab-size 8192
fi
jaxlm train --config gpt2-mini-sotu --out "$RUN" "$@"
jaxlm evaluate "$RUN" --data "$CACHE/sotu" --split validation --unigram-baseline "$CACHE/sotu/train.jsonl" \
  --out "$RUN/evaluation.json"
jaxlm generate "$RUN" --prompt "The state of the Union is" --max-new-tokens 40
