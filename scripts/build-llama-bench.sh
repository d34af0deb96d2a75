#!/usr/bin/env bash
# Build llama.cpp's llama-bench natively for this CPU, from the llama.cpp that PyPI's
# llama-cpp-python sdist vendors, so `steerguard bench --llama-bench PATH` can compare against it.
# Usage: bash scripts/build-llama-bench.sh [OUT_DIR]     (OUT_DIR defaults to .cache/llama.cpp)
# Produces OUT_DIR/llama-bench (static llama/ggml libraries) and OUT_DIR/VERSION. Skips the build
# when OUT_DIR/llama-bench already exists. Configured with GGML_NATIVE=ON, AMX off, no GPU
# backends and no curl; compiled with `nice -n 19` and 2 jobs because the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."

LCP_VERSION="0.3.16"
LCP_SDIST="llama_cpp_python-${LCP_VERSION}.tar.gz"
LCP_SHA256="34ed0f9bd9431af045bb63d9324ae620ad0536653740e9bb163a2e1fcb973be6"
# The llama.cpp commit that the sdist's CHANGELOG gives for this version (checked below). The sdist
# carries no git metadata, so llama-bench's build_commit shows BUILD_LABEL instead of "unknown".
LLAMA_COMMIT="4227c9be4268ac844921b90f31595f81236bd317"
BUILD_LABEL="llama-cpp-python-${LCP_VERSION}-vendor"

out="${1:-.cache/llama.cpp}"

if [ -x "$out/llama-bench" ]; then
  echo "llama-bench already built: $out/llama-bench (delete it to rebuild)"
  if [ -f "$out/VERSION" ]; then cat "$out/VERSION"; fi
  exit 0
fi

fail() {
  echo "build-llama-bench: $*" >&2
  exit 1
}
command -v cmake >/dev/null || fail "cmake not found on PATH (install cmake >= 3.14)"
command -v python3 >/dev/null || fail "python3 not found on PATH (needed for pip download)"
cc="${CC:-$(command -v cc || command -v gcc || command -v clang || true)}"
cxx="${CXX:-$(command -v c++ || command -v g++ || command -v clang++ || true)}"
[ -n "$cc" ] && command -v "$cc" >/dev/null || fail "no C compiler found (set CC or install gcc/clang)"
[ -n "$cxx" ] && command -v "$cxx" >/dev/null || fail "no C++ compiler found (set CXX or install g++/clang++)"
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "downloading llama-cpp-python==${LCP_VERSION} sdist"
python3 -m pip download -q "llama-cpp-python==${LCP_VERSION}" --no-binary :all: --no-deps -d "$tmp" \
  || fail "pip download of llama-cpp-python==${LCP_VERSION} failed"
[ -f "$tmp/$LCP_SDIST" ] || fail "pip did not produce $LCP_SDIST"
got="$(sha256sum "$tmp/$LCP_SDIST" | cut -d' ' -f1)"
[ "$got" = "$LCP_SHA256" ] || fail "sha256 mismatch for $LCP_SDIST (expected $LCP_SHA256, got $got)"

tar -xzf "$tmp/$LCP_SDIST" -C "$tmp"
src="$tmp/llama_cpp_python-${LCP_VERSION}/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || fail "no vendor/llama.cpp/CMakeLists.txt in $LCP_SDIST"
changelog="$tmp/llama_cpp_python-${LCP_VERSION}/CHANGELOG.md"
[ -f "$changelog" ] || fail "no CHANGELOG.md in $LCP_SDIST"
# This version's section: from its heading to the next one.
section="$(sed -n "/^## \[${LCP_VERSION}\]/,/^## \[/p" "$changelog")"
case "$section" in
  *"llama.cpp@${LLAMA_COMMIT}"*) ;;
  *) fail "the sdist's CHANGELOG does not name llama.cpp@${LLAMA_COMMIT} for ${LCP_VERSION}" ;;
esac
# The vendored tree's .git file points into the sdist's missing module store; without removing it
# llama.cpp's build-info step would run git against a broken gitdir.
rm -f "$src/.git"

amx=()
if grep -q 'GGML_AMX_TILE' "$src/ggml/CMakeLists.txt"; then
  amx=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi

echo "configuring llama.cpp (Release, GGML_NATIVE=ON, AMX off, CPU only, static)"
nice -n 19 cmake -S "$src" -B "$tmp/build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON "${amx[@]}" \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF \
  -DGGML_OPENCL=OFF -DGGML_KOMPUTE=OFF -DGGML_RPC=OFF -DGGML_BACKEND_DL=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_COMMIT="$BUILD_LABEL" \
  >"$tmp/configure.log" 2>&1 || {
  tail -n 40 "$tmp/configure.log" >&2
  fail "cmake configure failed (log above)"
}

echo "building llama-bench (nice -n 19, 2 jobs)"
start=$(date +%s)
nice -n 19 cmake --build "$tmp/build" --target llama-bench -j2 >"$tmp/build.log" 2>&1 || {
  tail -n 40 "$tmp/build.log" >&2
  fail "build of llama-bench failed (log above)"
}
seconds=$(($(date +%s) - start))

bin="$(find "$tmp/build" -type f -name llama-bench -perm -u+x | head -n 1)"
[ -n "$bin" ] || fail "build finished but no llama-bench binary was found"
mkdir -p "$out"
{
  echo "llama.cpp vendored by llama-cpp-python ${LCP_VERSION} (sdist sha256 ${LCP_SHA256})"
  echo "llama.cpp commit ${LLAMA_COMMIT} (per the sdist's CHANGELOG; llama-bench's build_commit: ${BUILD_LABEL})"
  echo "configured: Release, GGML_NATIVE=ON, AMX off, CPU only, static, no curl"
  echo "compiler: $("$cxx" --version | head -n 1)"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in ${seconds}s"
} >"$out/VERSION.tmp"
cp "$bin" "$out/llama-bench.tmp"
mv "$out/VERSION.tmp" "$out/VERSION"
mv "$out/llama-bench.tmp" "$out/llama-bench"
echo "installed $out/llama-bench"
cat "$out/VERSION"
