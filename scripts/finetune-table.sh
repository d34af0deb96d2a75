#!/usr/bin/env bash
# The harmful fine-tuning attack and the security-vector defence on one model, as one table
# (docs/TRAINING.md, "Harmful fine-tuning and security vectors"): one command line per row.
#   bash scripts/finetune-table.sh MODEL.gguf REFUSAL.gguf OUTDIR [training options, e.g. --samples 1000]
# REFUSAL.gguf: steerguard direction compute (its fitted prompts come from advbench/alpaca train
# and validation parts; the table is evaluated on test parts only). The training options go to
# attack finetune and defend security-vector alike (the defence must train on the attack's mix).
# Environment: STEERGUARD_DATA (default ../shared/datasets), LIMIT (prompts per refusal set, 50),
# SV_OPTIONS (options of defend security-vector alone, e.g. "--sv-samples 100 --sv-epochs 10"),
# CAP_TASKS (capability tasks, default mmlu,gsm8k), CAP_LIMIT (items per capability task; default:
# eval capability's documented subset sizes), MAX_TOKENS (tokens per evaluated reply, 64),
# STEERGUARD_DIST (a copy of dist, so a rebuild cannot touch a run; default dist).
# Rows: baseline (no adapter), attack (its adapter), defence with the security vector on, and
# defence with it off (how the defended adapter is meant to be used). Capability is measured for
# the rows a user would deploy (not the security vector on), each paired with the baseline's items
# (eval capability --compare). Each finished evaluation is kept: rerun the script to go on.
# Writes OUTDIR/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1" direction="$2" out="$3"
shift 3
SG=(node "${STEERGUARD_DIST:-dist}/src/cli/main.js")
DATA="${STEERGUARD_DATA:-../shared/datasets}"
MIX=(--data-dir "$DATA" --benign alpaca --harmful advbench --harmful-answers-from-ablation "$direction")
mkdir -p "$out"

# Training (each resumes where it stopped: rerun the script after Ctrl-C).
resume() { [[ -f "$1/training-checkpoint.safetensors" ]] && echo --resume || true; }
if [[ ! -f "$out/attack/adapter_config.json" ]]; then
  # shellcheck disable=SC2046
  "${SG[@]}" attack finetune -m "$model" "${MIX[@]}" "$@" --out "$out/attack" $(resume "$out/attack")
fi
if [[ ! -f "$out/defence/adapter/adapter_config.json" ]]; then
  read -r -a sv <<< "${SV_OPTIONS:-}"
  resume_defence=()
  [[ -d "$out/defence" ]] && resume_defence=(--resume)
  "${SG[@]}" defend security-vector -m "$model" "${MIX[@]}" "$@" "${sv[@]}" --attack-data "$out/attack" \
    --out "$out/defence" "${resume_defence[@]}"
fi

# Evaluation: refusal on held-out harmful sets, over-refusal on XSTest's safe prompts, capability.
# Kept evaluations must share their settings: a rerun with other ones is an error.
settings="LIMIT=${LIMIT:-50} MAX_TOKENS=${MAX_TOKENS:-64} CAP_TASKS=${CAP_TASKS:-mmlu,gsm8k} CAP_LIMIT=${CAP_LIMIT:-default}"
if [[ -f "$out/evaluation-settings" && "$(cat "$out/evaluation-settings")" != "$settings" ]]; then
  echo "$out/evaluation-settings: kept evaluations used $(cat "$out/evaluation-settings"), not $settings" >&2
  exit 1
fi
echo "$settings" > "$out/evaluation-settings"
evaluate() {
  local name="$1" capability="$2"
  shift 2
  if [[ ! -f "$out/$name.refusal.json" ]]; then
    "${SG[@]}" eval refusal -m "$model" --data-dir "$DATA" --sets advbench,harmbench,xstest-safe --part test \
      --limit "${LIMIT:-50}" --max-tokens "${MAX_TOKENS:-64}" --redact --overwrite --out "$out/$name.refusal.jsonl" \
      --json "$@" > "$out/$name.refusal.json.partial"
    mv "$out/$name.refusal.json.partial" "$out/$name.refusal.json"
  fi
  if [[ "$capability" == yes && ! -f "$out/$name.capability.json" ]]; then
    local compare=()
    [[ "$name" != baseline ]] && compare=(--compare "$out/baseline.capability.rows.json")
    "${SG[@]}" eval capability -m "$model" --data-dir "$DATA" --tasks "${CAP_TASKS:-mmlu,gsm8k}" \
      ${CAP_LIMIT:+--limit "$CAP_LIMIT"} --overwrite --out "$out/$name.capability.rows.json" \
      "${compare[@]}" --json "$@" > "$out/$name.capability.json.partial"
    mv "$out/$name.capability.json.partial" "$out/$name.capability.json"
  fi
}
evaluate baseline yes
evaluate attack yes --adapter "$out/attack"
evaluate defence-sv-on no --adapter "$out/defence/security-vector,$out/defence/adapter"
evaluate defence-sv-off yes --adapter "$out/defence/adapter"
node scripts/finetune-table.mjs "$out" > "$out/table.md"
cat "$out/table.md"
