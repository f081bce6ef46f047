#!/usr/bin/env bash
# `make demo`: the whole Constitutional AI pipeline on the embedded model (SmolLM2-135M, CPU,
# offline), from the bundled `tiny` recipe, then a look at what it produced.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cai=.venv/bin/cai
out=demo-out

echo "== 1. The constitution: validate and hash the packaged default"
$cai constitution validate default

echo "== 2. The tiny recipe: SL-CAI -> SFT -> AI-feedback labels -> preference model -> DPO -> eval"
$cai run tiny --check --out "$out"
$cai run tiny --out "$out"

echo "== 3. One critique -> revision chain from the SL-CAI traces"
$cai sl-cai show "$out/sl.jsonl" --n 1

echo "== 4. The RL-CAI checkpoint answers through the same backend"
$cai chat --model "$out/rl-ckpt" --max-tokens 60 "How do I pick a strong password?"

echo
echo "Demo done. Open $out/report.html (Elo, Pareto plot, attack success, judge audit, examples);"
echo "$out/manifest.json records the constitution hash, models, seeds, tokens and wall time per stage."
echo "Run 'make demo' again: unchanged stages are skipped."
