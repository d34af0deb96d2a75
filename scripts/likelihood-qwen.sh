#!/usr/bin/env bash
# The harmless-prompt log-likelihood change of each refusal steering on Qwen2.5-Coder-0.5B-Instruct
# (EVAL.md, "Two-sided gated correction"): the direction added, ablated, and the two-sided gate, on
# Alpaca's test split and the five held-out XSTest safe types.
#   bash scripts/likelihood-qwen.sh READING.json REFUSAL.gguf OUTDIR BENIGN_BELOW [eval options]
set -euo pipefail
cd "$(dirname "$0")/.."
reading="$1" vector="$2" out="$3" below="$4"
shift 4
mkdir -p "$out"
M=.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
SETS=alpaca:test,xstest-safe:real_group_nons_discr,xstest-safe:nons_group_real_discr,xstest-safe:historical_events,xstest-safe:privacy_public,xstest-safe:privacy_fictional
run() {
  local name="$1"
  shift
  node dist/src/cli/main.js eval likelihood -m "$M" --sets "$SETS" --limit 8 --max-tokens 32 --json \
    --overwrite --out "$out/$name-rows.json" "$@" > "$out/$name.json"
}
run add "$@" --steer add --vector "$vector" --coeff 1
run ablate "$@" --steer ablate --vector "$vector"
run gated "$@" --steer conditional --reading "$reading" --vector "$vector" --coeff 1 \
  --benign-below "$below" --benign-steer ablate
