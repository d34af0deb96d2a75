#!/usr/bin/env bash
# Two-sided gated refusal steering on Qwen2.5-Coder-0.5B-Instruct, measured on sources the monitor
# and the refusal direction never saw (EVAL.md, "Two-sided gated correction").
#   bash scripts/gate-qwen.sh READING.json REFUSAL.gguf OUTDIR BENIGN_BELOW [eval options, e.g. --data-dir DIR]
# READING.json: scripts/generalize-qwen.sh ... --save-reading; REFUSAL.gguf: steerguard direction compute.
# Conditions: no steering, the direction added (coefficient 1) and ablated everywhere, and the
# two-sided gate (add where the reading flags, ablate below BENIGN_BELOW, else nothing). Test sets:
# HarmBench and Alpaca's test split (40 each), five XSTest safe types the reading held out (8 each).
set -euo pipefail
cd "$(dirname "$0")/.."
reading="$1" vector="$2" out="$3" below="$4"
shift 4
mkdir -p "$out"
M=.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
XS_S_TEST=xstest-safe:real_group_nons_discr,xstest-safe:nons_group_real_discr,xstest-safe:historical_events,xstest-safe:privacy_public,xstest-safe:privacy_fictional
run() {
  local name="$1"
  shift
  for part in "harmbench,alpaca:test --limit 40" "$XS_S_TEST --limit 8"; do
    local tag="$name-$([[ $part == harmbench* ]] && echo ha || echo xs)"
    # shellcheck disable=SC2086
    node dist/src/cli/main.js eval refusal -m "$M" --sets $part --max-tokens 40 --json --overwrite --redact \
      --out "$out/$tag.jsonl" "$@" > "$out/$tag.json"
  done
}
run base "$@"
run add "$@" --steer add --vector "$vector" --coeff 1
run ablate "$@" --steer ablate --vector "$vector"
run gated "$@" --steer conditional --reading "$reading" --vector "$vector" --coeff 1 \
  --benign-below "$below" --benign-steer ablate
