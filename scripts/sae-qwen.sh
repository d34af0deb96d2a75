#!/usr/bin/env bash
# The SAE figures of EVAL.md ("Sparse autoencoders on Qwen2.5-Coder-0.5B-Instruct"): a Top-k SAE
# trained on the model's own chat transcripts, its quality on transcripts of other sources, and
# (with --steer) the audit's sae step and the capability cost of the chosen clamp.
#   bash scripts/sae-qwen.sh MODEL.gguf AUDIT_DIR OUTDIR [--steer] [--data-dir DIR]
# AUDIT_DIR is a finished audit of MODEL (steerguard audit ... --steps reading,direction,baseline,steering):
# its replies/none.jsonl (held-out sources: harmbench, XSTest, alpaca test) are the SAE's held-out text.
# Environment: LAYER (12), EXPANSION (8), K (64), STEPS (1500), BATCH (1024), CORPUS_LIMIT (240 per set),
# GSM8K_ROWS (300), CAPABILITY_LIMIT (40), CAPABILITY_TASKS (mmlu,gsm8k,truthfulqa). Each stage writes its output once; rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1" audit="$2" out="$3"
shift 3
steer=0
if [ "${1:-}" = "--steer" ]; then
  steer=1
  shift
fi
data="../shared/datasets"
if [ "${1:-}" = "--data-dir" ]; then
  data="$2"
  shift 2
fi
layer="${LAYER:-12}" expansion="${EXPANSION:-8}" k="${K:-64}" steps="${STEPS:-1500}" batch="${BATCH:-1024}"
mkdir -p "$out"
S="node ${STEERGUARD_DIST:-dist}/src/cli/main.js"  # STEERGUARD_DIST: a copy of dist, so a rebuild cannot touch a run
export STEERGUARD_DATA="$data"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# 1. The model's own greedy replies to development prompts (harmful and harmless), kept as data.
if [ ! -f "$out/corpus-replies.jsonl" ]; then
  stamp "corpus replies"
  $S eval refusal -m "$model" --sets advbench,alpaca:train --limit "${CORPUS_LIMIT:-240}" --max-tokens 64 \
    --out "$out/corpus-replies.jsonl" --json >"$out/corpus-replies.json"
fi
# 2. Transcripts: those replies and GSM8K worked answers (training); the audit's baseline replies
#    to its evaluated prompts, of other sources (held out).
[ -f "$out/train.jsonl" ] || node scripts/sae-transcripts.mjs "$model" "$out/train.jsonl" \
  "$out/corpus-replies.jsonl" "gsm8k:$data/gsm8k/train.jsonl:${GSM8K_ROWS:-300}"
[ -f "$out/heldout.jsonl" ] || node scripts/sae-transcripts.mjs "$model" "$out/heldout.jsonl" \
  "$audit/replies/none.jsonl"
# 3. Residual-stream activations at every token of the training transcripts.
hook="blocks.$layer.hook_resid_post"
if [ ! -f "$out/acts.safetensors" ]; then
  stamp "activations ($hook)"
  $S activations "$model" --prompts "$out/train.jsonl" --column text --no-chat --positions all \
    --hooks "$hook" --dtype F16 --out "$out/acts.safetensors" --json >"$out/acts.json"
fi
# 4. Train (resumable: an interrupted stage reruns; a finished one, with train.json, is kept even
#    if STEPS changes, since more steps would continue it), with the peak memory of the process.
sae="$out/sae-l$layer-x$expansion-k$k"
if [ ! -s "$out/train.json" ]; then
  stamp "sae train ($steps steps of $batch tokens)"
  /usr/bin/time -f '%M' -o "$out/train-peak-kib.txt" \
    $S sae train --activations "$out/acts.safetensors" --layer "$layer" --expansion "$expansion" --k "$k" \
    --steps "$steps" --batch-size "$batch" --out "$sae" --json >"$out/train.json.tmp"
  mv "$out/train.json.tmp" "$out/train.json"
fi
# 5. Quality on the held-out transcripts.
if [ ! -s "$out/eval.json" ]; then
  stamp "sae eval"
  $S sae eval --sae "$sae" --model "$model" --prompts "$out/heldout.jsonl" --column text --json >"$out/eval.json.tmp"
  mv "$out/eval.json.tmp" "$out/eval.json"
fi
[ "$steer" = 1 ] || exit 0

# 6. The audit's sae step on the same evaluated prompts as its steering step.
stamp "audit sae step"
$S audit -m "$model" --out "$audit" --data-dir "$data" --steps reading,direction,baseline,steering,sae --sae "$sae" \
  >"$out/audit-sae.log" 2>&1
read -r feature clamp < <(node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1] + "/report.json", "utf8")).results.sae;
  console.log(r.feature, r.clamp);' "$audit")
# 7. Capability with no steering, the clamp always on and the clamp behind the audit's gate, on
#    the same seeded items; the steered runs print their paired change from no steering.
gate=(--reading "$audit/reading.json" --vector "$audit/refusal-direction.gguf" --benign-below 0 --benign-steer ablate)
clampArgs=(--sae "$sae" --feature "$feature" --clamp "$clamp")
for cond in none clamp gated-clamp; do
  [ -s "$out/capability-$cond.json" ] && continue
  stamp "capability: $cond"
  case "$cond" in
    none) steering=() ;;
    clamp) steering=(--steer sae-clamp "${clampArgs[@]}" --compare "$out/capability-none-rows.json") ;;
    gated-clamp) steering=(--steer conditional "${gate[@]}" "${clampArgs[@]}" --compare "$out/capability-none-rows.json") ;;
  esac
  $S eval capability -m "$model" --data-dir "$data" --tasks "${CAPABILITY_TASKS:-mmlu,gsm8k,truthfulqa}" \
    --limit "${CAPABILITY_LIMIT:-40}" "${steering[@]}" \
    --out "$out/capability-$cond-rows.json" --overwrite --json >"$out/capability-$cond.json.tmp"
  mv "$out/capability-$cond.json.tmp" "$out/capability-$cond.json"
done
stamp done
