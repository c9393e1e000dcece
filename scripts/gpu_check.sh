#!/usr/bin/env bash
# The GPU check: cached greedy decoding of gpt2 (124M, random weights) on one GPU in fp32, bf16 and
# int8 (with fp32 and with bf16 compute) at batch 1, and decoding throughput at batch 64 (quality is
# left to the CPU runs); meant to take under 5 minutes on one GPU, most of it compilation. Needs a
# CUDA build of jax in the environment (pip install "jax[cuda12]"). Prints
# the markdown table and the targets: at least 2,000 tokens/s at batch 1 in bf16, and bf16 faster
# than fp32. Writes gpu_check.json and gpu_check.md (OUT=path/name to move them).
# Extra arguments go to jaxlm benchmark. A dry run on a CPU, in about a minute:
#   MODEL=gpt2-tiny bash scripts/gpu_check.sh --new-tokens 32
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-gpt2}
OUT=${OUT:-gpu_check}
python - <<'EOF'
import jax
print("devices:", jax.devices())
EOF
python -m jaxlm benchmark --mode infer --model "$MODEL" --variants float32,bfloat16,int8,int8-bf16 --batch-sizes 1,64 \
  --prompt-len 16 --new-tokens 128 --rounds 3 --references none --no-encoder --quality-tokens 0 \
  --out "$OUT.json" "$@" > /dev/null
OUT="$OUT" python - <<'EOF'
import json, os
out = json.load(open(os.environ["OUT"] + ".json"))
print(out["markdown"])
rows = out["rows"]
bf16, fp32 = rows["bfloat16"]["decode_b1"], rows["float32"]["decode_b1"]
print(f"target: bf16 batch-1 decoding >= 2000 tokens/s: {bf16['tokens_per_s']:.0f} "
      f"{'PASS' if bf16['tokens_per_s'] >= 2000 else 'FAIL'}")
print(f"target: bf16 faster than fp32 at batch 1 (time ratio {bf16['vs_fp32']:.2f}): "
      f"{'PASS' if bf16['vs_fp32'] < 1 else 'FAIL'}")
EOF
