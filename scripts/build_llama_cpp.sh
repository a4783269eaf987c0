#!/usr/bin/env bash
# Build llama.cpp's llama-server and its shared libraries (libllama.so, libggml*.so, libmtmd.so)
# from the llama.cpp sources vendored in the llama-cpp-python sdist that scripts/bootstrap.sh
# pins, with the same CPU flags (scripts/cpu_flags.sh): the baseline `python -m bench` compares
# our child with, and, with --cuda, a GPU build that llama-cpp-python loads instead of its own
# (LLAMA_CPP_LIB_PATH=OUT).
#
# Usage: scripts/build_llama_cpp.sh [--cuda ARCHS] [--source DIR|TARBALL] [--jobs N] [OUT]
#        scripts/build_llama_cpp.sh --pack-source FILE.tar.gz
#
#   --cuda ARCHS   also build ggml's CUDA backend for CMAKE_CUDA_ARCHITECTURES=ARCHS ("90": H100)
#   --source X     a llama.cpp tree, or a tarball of one made by --pack-source (for a machine
#                  with no network); default: the pinned sdist, downloaded once with pip
#   --jobs N       parallel compile jobs (default: nproc)
#   OUT            where llama-server and the libraries go, side by side (their RPATH is
#                  $ORIGIN); default ~/.cache/llama-router/llama-cpp-KEY, KEY from the version
#                  and the CMake arguments. Nothing is built when OUT already holds this build.
#   --pack-source  write the vendored llama.cpp sources, without docs, models, tests and the
#                  web UI's sources (about 8 MB), to FILE, for --source elsewhere
#
# Prints, as its last line, OUT.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/cpu_flags.sh
source "$repo/scripts/cpu_flags.sh"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/llama-router"
cuda_archs=""
source_arg=""
pack_to=""
jobs=$(nproc)
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) cuda_archs=$2; shift 2 ;;
    --source) source_arg=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --pack-source) pack_to=$2; shift 2 ;;
    -h | --help) sed -n '2,21p' "$0" | cut -c3-; exit 0 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The vendored llama.cpp tree of the pinned sdist, downloaded and unpacked once.
sdist_tree() {
  local name="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
  local tree="$cache/src/$name/vendor/llama.cpp"
  if [ ! -f "$tree/CMakeLists.txt" ]; then
    mkdir -p "$cache/src"
    if [ ! -f "$cache/src/$name.tar.gz" ]; then
      local python=python3
      [ -x "$repo/.venv/bin/python" ] && python="$repo/.venv/bin/python"
      say "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist"
      "$python" -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$cache/src" >&2
    fi
    tar xzf "$cache/src/$name.tar.gz" -C "$cache/src"
  fi
  printf '%s' "$tree"
}

if [ -n "$pack_to" ]; then
  tree=$(sdist_tree)
  say "packing $tree into $pack_to"
  # Only what CMake reads for llama-server and the libraries: the other backends' sources stay
  # (ggml adds a backend's folder only when it is switched on), the bulky rest goes.
  tar czf "$pack_to" -C "$(dirname "$tree")" \
    --exclude=llama.cpp/docs --exclude=llama.cpp/models --exclude=llama.cpp/media \
    --exclude=llama.cpp/tests --exclude=llama.cpp/examples --exclude=llama.cpp/pocs \
    --exclude=llama.cpp/benches --exclude=llama.cpp/gguf-py --exclude=llama.cpp/conversion \
    --exclude=llama.cpp/tools/ui/src --exclude=llama.cpp/tools/ui/tests \
    --exclude=llama.cpp/tools/ui/static --exclude=llama.cpp/tools/ui/package-lock.json \
    --exclude=.git llama.cpp
  ls -l "$pack_to" >&2
  exit 0
fi

cmake_args="$(llama_cpp_cpu_cmake_args)"
if [ -n "$cuda_archs" ]; then
  cmake_args+=" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$cuda_archs"
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
fi
key=$(llama_cpp_cache_key "$cmake_args")
out=${out:-$cache/llama-cpp-$key}
stamp="$out/.build-args"
wanted="llama-cpp-python $LLAMA_CPP_PYTHON_VERSION $cmake_args"
if [ -x "$out/llama-server" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
  say "already built: $out"
  printf '%s\n' "$out"
  exit 0
fi

if [ -z "$source_arg" ]; then
  tree=$(sdist_tree)
elif [ -d "$source_arg" ]; then
  tree=$source_arg
else
  mkdir -p "$out.src"
  tar xzf "$source_arg" -C "$out.src"
  tree="$out.src/llama.cpp"
fi

build="$out.build"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
say "configuring llama.cpp (${cmake_args})"
# shellcheck disable=SC2086  # cmake_args is a list of words
cmake -S "$tree" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  $cmake_args >"$build.configure.log" 2>&1 || { tail -40 "$build.configure.log" >&2; exit 1; }
say "compiling llama-server and the libraries with $jobs jobs"
started=$(date +%s)
cmake --build "$build" --target llama-server llama ggml mtmd -j "$jobs" >"$build.log" 2>&1 ||
  { tail -60 "$build.log" >&2; exit 1; }
say "compiled in $(( $(date +%s) - started )) s"

rm -rf "$out.tmp" && mkdir -p "$out.tmp"
cp -P "$build"/bin/llama-server "$build"/bin/lib*.so* "$out.tmp"/
find "$out.tmp" -type f -exec strip --strip-unneeded {} +
printf '%s' "$wanted" >"$out.tmp/.build-args"
rm -rf "$out" && mv "$out.tmp" "$out"
rm -rf "$build" "$out.src" "$build.log" "$build.configure.log"
say "built $out"
printf '%s\n' "$out"
