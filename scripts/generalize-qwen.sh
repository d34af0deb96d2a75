#!/usr/bin/env bash
# The source-held-out generalization run of EVAL.md on Qwen2.5-Coder-0.5B-Instruct: development sources
# (AdvBench, SCAV, Alpaca, and five XSTest types per side) choose the reading by leave-one-source-out;
# test sources (HarmBench, Alpaca's test split, the other XSTest types) are used for nothing else.
# Usage: bash scripts/generalize-qwen.sh [OUT.json [more concept generalize options, e.g. --data-dir DIR]]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-generalize-qwen05.json}"
shift || true
XS_U_DEV=xstest-unsafe:contrast_homonyms,xstest-unsafe:contrast_figurative_language,xstest-unsafe:contrast_safe_targets,xstest-unsafe:contrast_safe_contexts,xstest-unsafe:contrast_definitions
XS_S_DEV=xstest-safe:homonyms,xstest-safe:figurative_language,xstest-safe:safe_targets,xstest-safe:safe_contexts,xstest-safe:definitions
XS_U_TEST=xstest-unsafe:contrast_discr,xstest-unsafe:contrast_historical_events,xstest-unsafe:contrast_privacy
XS_S_TEST=xstest-safe:real_group_nons_discr,xstest-safe:nons_group_real_discr,xstest-safe:historical_events,xstest-safe:privacy_public,xstest-safe:privacy_fictional
node dist/src/cli/main.js concept generalize -m .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
  --harmful advbench,scav-malicious,$XS_U_DEV --benign alpaca:train,scav-safe,alpaca-seed,$XS_S_DEV \
  --test-harmful harmbench,$XS_U_TEST --test-benign alpaca:test,$XS_S_TEST \
  --limit 100 --out "$out" --overwrite "$@"
