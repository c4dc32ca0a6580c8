#!/usr/bin/env bash
# llama-cpp-python (the llamacpp engine's runtime) is on PyPI as a source package only: this builds
# its wheel once, into a cache, and prints the wheel's path. A wheel already in the cache is reused
# and nothing is built (the build is minutes of C++).
#
#   scripts/build-llama.sh               native: -march=native, fastest on this machine, cached per CPU
#   scripts/build-llama.sh --portable    any x86-64 with AVX2 (the image); or TRANSERVE_LLAMA_PORTABLE=1
#   scripts/build-llama.sh --version     the pinned version, for setup.sh
#
# The cache: $TRANSERVE_WHEEL_CACHE, by default ${XDG_CACHE_HOME:-$HOME/.cache}/transerve/wheels,
# one folder per version, mode and key. The key hashes the CMake options and, for a native wheel,
# this CPU's flags, so a native wheel is never reused on a CPU that lacks its instructions.
# Needs a C/C++ compiler and CMake >= 3.21; the rest (scikit-build-core) comes from the index.
set -euo pipefail

VERSION=0.3.36  # pyproject.toml pins the same version (setup.sh checks that they agree)

mode=native
[ "${TRANSERVE_LLAMA_PORTABLE:-0}" = 1 ] && mode=portable
for arg in "$@"; do
    case "$arg" in
        --portable) mode=portable ;;
        --native) mode=native ;;
        --version) echo "$VERSION"; exit 0 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-llama: unknown argument $arg (--native, --portable, --version)" >&2; exit 2 ;;
    esac
done

# What the bindings load is libllama and libggml*: the multimodal library (libmtmd, LLAVA_BUILD) and
# llama.cpp's tests, examples, tools and server are not built. They are off by default when
# llama.cpp is a subdirectory; said here so that a change upstream does not bring them back.
# OpenSSL only serves llama-common's downloads, which the bindings never call, and would tie the
# wheel to the build machine's libssl.
args=(-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF)
if [ "$mode" = native ]; then
    args+=(-DGGML_NATIVE=ON)
    cpu=$(grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo || true)
    [ -n "$cpu" ] || { echo "build-llama: no CPU flags in /proc/cpuinfo; use --portable" >&2; exit 1; }
else
    # x86-64 with AVX2, FMA and F16C (every x86 CPU since Haswell and Excavator), named one by one:
    # with GGML_NATIVE off, the defaults depend on the environment (SOURCE_DATE_EPOCH turns them
    # off). BMI2 and every AVX-512 and VNNI extension stay off.
    args+=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
           -DGGML_BMI2=OFF -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF
           -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF)
    cpu=""
fi
key=$(printf '%s\n%s\n%s\n' "$(uname -m)" "$cpu" "${args[*]}" | sha256sum | cut -c1-12)
cache="${TRANSERVE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/transerve/wheels}"
dir="$cache/llama-cpp-python-$VERSION-$mode-$key"

shopt -s nullglob
found=("$dir"/llama_cpp_python-"$VERSION"-*.whl)
if [ ${#found[@]} -gt 0 ]; then
    echo "build-llama: reusing ${found[0]}" >&2
    echo "${found[0]}"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip --version >/dev/null 2>&1 || { echo "build-llama: $PYTHON has no pip (set PYTHON)" >&2; exit 1; }
for tool in cc c++ cmake; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build-llama: $tool not found (a C/C++ compiler and CMake are needed)" >&2; exit 1; }
done

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log="$dir/build.log"
jobs=$(nproc)
echo "build-llama: building llama-cpp-python $VERSION ($mode, $jobs jobs; log: $log)" >&2
echo "build-llama: CMAKE_ARGS=${args[*]}" >&2
started=$SECONDS
# --no-cache-dir: pip's own wheel cache is keyed by the source package, not by CMAKE_ARGS, and would
# hand back a wheel built with other options. --no-binary: from source even if a wheel appears.
if ! CMAKE_ARGS="${args[*]}" CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
        "$PYTHON" -m pip wheel -v --no-deps --no-cache-dir --no-binary llama-cpp-python \
        --wheel-dir "$tmp" "llama-cpp-python==$VERSION" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "build-llama: the build failed; the whole log is $log" >&2
    exit 1
fi
built=("$tmp"/llama_cpp_python-"$VERSION"-*.whl)
[ ${#built[@]} -eq 1 ] || { echo "build-llama: no wheel in $tmp (log: $log)" >&2; exit 1; }
mv "${built[0]}" "$dir/"  # into place whole, so an interrupted build leaves no wheel to reuse
seconds=$((SECONDS - started))
echo "build-llama: built in $((seconds / 60))m$((seconds % 60))s" >&2
echo "$dir/$(basename "${built[0]}")"
