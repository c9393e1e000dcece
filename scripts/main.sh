#!/usr/bin/env bash
# The main job, from a fresh clone: set up, fetch and prepare the State of the Union corpus,
# train a sentencepiece tokenizer and a small GPT-2 on a CPU, evaluate validation perplexity
# next to a unigram baseline, and continue a prompt. Rerunning resumes or reuses each stage.
# Extra arguments go to scripts/train.py (e.g. --set steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/env.sh

CACHE=${JAXLM_CACHE:-$HOME/.cache/jaxlm}
RUN=${RUN:-runs/gpt2-mini-sotu}

python scripts/prepare_data.py sotu
if [ ! -f "$CACHE/sotu/spm8k.model" ]; then
  python scripts/train_tokenizer.py "$CACHE/sotu/train.jsonl" --output "$CACHE/sotu/spm8k" --vocab-size 8192
fi
python scripts/train.py --config gpt2-mini-sotu --set "workdir=$RUN" "$@"
python scripts/evaluate.py "$RUN" --data "$CACHE/sotu/validation.jsonl" --unigram-baseline "$CACHE/sotu/train.jsonl"
python scripts/generate.py "$RUN" --prompt "The state of the Union is" --max-new-tokens 40
