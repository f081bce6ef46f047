#!/usr/bin/env bash
# `make demo`: what exists today, end to end on the embedded model (SmolLM2-135M, CPU, offline).
# Stages still to come (RL-CAI, evaluation, report) will be added here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cai=.venv/bin/cai
out=demo-out
mkdir -p "$out"

echo "== 1. The constitution: validate and hash the packaged default"
$cai constitution validate default

echo "== 2. SL-CAI data: 4 AdvBench prompts x 1 critique/revision round, mixed with helpful prompts"
$cai sl-cai generate --prompts builtin:advbench --limit 4 --rounds 1 --max-tokens 96 \
  --helpful-ratio 0.5 --out "$out/sl.jsonl" --seed 0

echo "== 3. One critique -> revision chain from the traces"
$cai sl-cai show "$out/sl.jsonl" --n 1

echo "== 4. Supervised fine-tuning (LoRA, 2 steps: a smoke run, not a useful model)"
$cai sl-cai train --data "$out/sl.sft.jsonl" --base embedded --out "$out/sl-ckpt" --max-steps 2 \
  --batch-size 4 --overwrite

echo "== 5. The fine-tuned checkpoint answers through the same backend"
$cai chat --model "$out/sl-ckpt" --max-tokens 60 "How do I pick a strong password?"

echo
echo "Demo done. Artifacts in $out/: sl.jsonl (traces), sl.sft.jsonl (TRL rows), sl-ckpt/ (LoRA),"
echo "and *.manifest.json (constitution hash, tokens, wall time). Not yet in the demo: RL-CAI,"
echo "evaluation and the HTML report (open issues)."
