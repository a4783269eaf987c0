#!/usr/bin/env bash
# Create .venv in the repo root and install llama-router with everything it needs.
#
# Why a script and not a bare `pip install`: llama-cpp-python compiles llama.cpp, and its default
# (GGML_NATIVE=ON) turns on every instruction set the CPU advertises, AMX included. Some CPUs
# (and many VMs) advertise AMX but trap on it, so that build dies with SIGILL at the first
# quantized matmul. We build with GGML_NATIVE=OFF and switch on, one by one, the x86 extensions
# /proc/cpuinfo lists, never AMX (scripts/cpu_flags.sh, shared with scripts/build_llama_cpp.sh).
# The wheel is cached under a key made of the version and the flags, so a second set-up (or CI on
# the same machine) installs in seconds.
#
# Set CMAKE_ARGS yourself to override (for CUDA: CMAKE_ARGS="-DGGML_CUDA=on"; see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/cpu_flags.sh
source scripts/cpu_flags.sh   # LLAMA_CPP_PYTHON_VERSION, the CPU flags, the cache key
PYTHON=${PYTHON:-python3}
EXTRAS=${1:-}   # "test" installs the test tools too

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip wheel

if [ -z "${CMAKE_ARGS:-}" ]; then
  CMAKE_ARGS=$(llama_cpp_cpu_cmake_args)
fi
export CMAKE_ARGS

installed=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)
stamp=.venv/.llama-cpp-build-flags
if [ "$installed" != "$LLAMA_CPP_PYTHON_VERSION" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$CMAKE_ARGS" ]; then
  wheels=$(llama_cpp_wheel_dir "$CMAKE_ARGS")
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "compiling llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (llama.cpp; about 5-10 minutes on 2 cores)"
    say "CMAKE_ARGS=$CMAKE_ARGS"
    mkdir -p "$wheels.tmp"
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
      .venv/bin/python -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
      --verbose -w "$wheels.tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" 2>&1 |
      sed -nuE 's/^ *\[([0-9]+)\/([0-9]+)\].*/  llama.cpp: compiled \1 of \2 files/p; /Created wheel|ERROR|error:|Error:/p' || true
    ls "$wheels.tmp"/llama_cpp_python-*.whl >/dev/null 2>&1 || { echo "llama-cpp-python build failed" >&2; exit 1; }
    rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
  fi
  say "installing llama-cpp-python from $wheels"
  .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
  printf '%s' "$CMAKE_ARGS" > "$stamp"
fi

say "installing llama-router${EXTRAS:+ [$EXTRAS]} into .venv"
.venv/bin/python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
if [ "$EXTRAS" = test ]; then
  say "installing the plugin packages of plugins/ (their tests use their entry points)"
  .venv/bin/python -m pip install --quiet -e plugins/apikeys -e plugins/memory-fit -e plugins/usage-log
  # Ray Serve for plugins/ray-serve's test (a local Ray cluster): ~80 MB wheel, ~15 s.
  .venv/bin/python -m pip install --quiet -e "plugins/ray-serve[ray]"
  # tests/test_page.py drives Debian's chromium with Playwright (from the test extra); never
  # `playwright install`, which downloads a browser build of its own.
  if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's chromium for the browser tests (tests/test_page.py)"
      as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      say "no apt-get: install chromium at /usr/bin/chromium yourself for tests/test_page.py"
    fi
  fi
fi
