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
# `cai run` ends with the eval's harm numbers, the judge's beside the refusal instrument's (each
# with its 95% interval and n), and one line on whether the judge passed its own audit: a judge
# whose verdicts flip when A and B swap, or that does not clearly agree with people on the
# bundled human-labelled pairs, gets a warning, and its Elo and attack success are not results.

echo "== 3. One critique -> revision chain from the SL-CAI traces"
$cai sl-cai show "$out/sl.jsonl" --n 1

echo "== 4. The RL-CAI checkpoint answers through the same backend"
$cai chat --model "$out/rl-ckpt" --max-tokens 60 "How do I pick a strong password?"

echo
echo "Demo done. Open $out/report.html (the judge's audit, harm numbers from the refusal instrument beside"
echo "the judge's, Elo, Pareto plot, judge audit, examples; judge-derived numbers carry a warning if it failed);"
echo "$out/manifest.json records the constitution hash, models, seeds, tokens and wall time per stage."
echo "Run 'make demo' again: unchanged stages are skipped."
