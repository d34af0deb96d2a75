#!/usr/bin/env bash
# Capability, bias and multi-turn figures of EVAL.md ("Capability, bias and multi-turn attacks:
# no steering against the audit's gate"), for one model and the artefacts of its audit.
#   bash scripts/capability-bias.sh MODEL.gguf AUDIT_DIR OUTDIR [--multiturn] [--data-dir DIR]
# BIAS_LIMIT=N sets the BBQ and CrowS-Pairs items (default 240; EVAL.md's Qwen runs used 120).
# AUDIT_DIR holds reading.json and refusal-direction.gguf (`steerguard audit --steps reading,direction`
# makes them). Each run writes OUTDIR/<name>.json (the --json figures) and <name>-rows.json; a run
# whose .json exists is skipped, so an interrupted script resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1" audit="$2" out="$3"
shift 3
multiturn=0
if [ "${1:-}" = "--multiturn" ]; then
  multiturn=1
  shift
fi
data="../shared/datasets"
if [ "${1:-}" = "--data-dir" ]; then
  data="$2"
  shift 2
fi
mkdir -p "$out"
bias_limit="${BIAS_LIMIT:-240}"
S="node dist/src/cli/main.js"
gate=(--steer conditional --reading "$audit/reading.json" --vector "$audit/refusal-direction.gguf" --coeff 1
  --benign-below 0 --benign-steer ablate)
run() { # name command...
  local name="$1"
  shift
  [ -s "$out/$name.json" ] && return
  echo "== $name $(date -u +%H:%M:%S)" >&2
  "$@" --json > "$out/$name.json.tmp"
  mv "$out/$name.json.tmp" "$out/$name.json"
}
# capability: MMLU 0-shot (285), GSM8K (50), TruthfulQA (100), the default subsets
run cap-base $S eval capability -m "$model" --data-dir "$data" --out "$out/cap-base-rows.json" --overwrite
run cap-gate $S eval capability -m "$model" --data-dir "$data" --out "$out/cap-gate-rows.json" --overwrite "${gate[@]}"
# bias: $BIAS_LIMIT items each; CrowS-Pairs has no prompt for a gate to read, so it gets what the gate gives
# clearly benign prompts (the direction ablated)
run bias-base $S eval bias -m "$model" --data-dir "$data" --limit "$bias_limit" --out "$out/bias-base-rows.json" --overwrite
run bbq-gate $S eval bias -m "$model" --tasks bbq --data-dir "$data" --limit "$bias_limit" \
  --out "$out/bbq-gate-rows.json" --overwrite "${gate[@]}"
run crows-ablate $S eval bias -m "$model" --tasks crows-pairs --data-dir "$data" --limit "$bias_limit" \
  --out "$out/crows-ablate-rows.json" --overwrite --steer ablate --vector "$audit/refusal-direction.gguf"
if [ "$multiturn" = 1 ]; then
  # the model as its own attacker, 20 HarmBench goals (the audit's held-out harmful source), 5 turns
  run mt-base $S eval multiturn -m "$model" --harmful harmbench --limit 20 --turns 5 --data-dir "$data" \
    --out "$out/mt-base-conversations.json" --overwrite
  run mt-gate $S eval multiturn -m "$model" --harmful harmbench --limit 20 --turns 5 --data-dir "$data" \
    --out "$out/mt-gate-conversations.json" --overwrite "${gate[@]}"
fi
