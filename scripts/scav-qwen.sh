#!/usr/bin/env bash
# The SCAV attack on Qwen2.5-Coder-0.5B-Instruct (EVAL.md, "SCAV attack"): a concept trained on the
# SCAV paper's own prompt sets (scav-malicious vs scav-safe), the attack measured on HarmBench, a
# source it never saw, against no attack, the refusal direction ablated, and subtracted.
#   bash scripts/scav-qwen.sh REFUSAL.gguf OUTDIR [options for both commands, e.g. --data-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
vector="$1" out="$2"
shift 2
mkdir -p "$out"
M=.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
node dist/src/cli/main.js concept train -m "$M" --positive scav-malicious --negative scav-safe \
  --out "$out/scav.concept.safetensors" --overwrite --json "$@" > "$out/concept.json"
node dist/src/cli/main.js attack scav -m "$M" --concept "$out/scav.concept.safetensors" --prompts harmbench \
  --part all --limit 40 --direction "$vector" --max-tokens 40 --json --redact --overwrite \
  --out "$out/attack.jsonl" "$@" > "$out/attack.json"
