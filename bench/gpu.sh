#!/usr/bin/env bash
# On a lent GPU machine (bench/README.md, "GPU"): build llama.cpp with CUDA from the carried
# sources (or unpack the build carried in .gpu/artifacts), pack a fresh build into $OUT so that
# later calls carry it instead of building, then bench our child against llama-server.
#
# Usage, from the repo root with .gpu carried (bench/README.md says how to fill it):
#   bash bench/gpu.sh [ARGS of python -m bench.gpu]
# Environment: OUT (default /tmp/bench-gpu-out), CUDA_ARCHS (default 90), JOBS (default nproc),
#   BENCH_TIMEOUT (seconds for the bench, default 180), CPU_ONLY=1 (a dry run without CUDA),
#   PYTHON (an absolute path; default python3),
#   ROUTER_FROM (a folder holding a router/ package to bench instead of the working tree's,
#   e.g. .gpu/baseline from `git archive HEAD router | tar x -C .gpu/baseline`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/bench-gpu-out}
build=/tmp/llama-cpp-gpu      # llama-server and the libraries, side by side
site=/tmp/bench-gpu-site      # the carried wheels, installed
mkdir -p "$out"
stamp() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

stamp "machine: $(nproc) CPUs; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
# The carried wheels this interpreter can install (all of them on the GPU machine's 3.12; a dry
# run on another Python skips the compiled ones built for 3.12 and uses its own).
mapfile -t wheels < <("${PYTHON:-python3}" - .gpu/whl/*.whl <<'PY'
import sys
from pip._vendor.packaging.tags import sys_tags
from pip._vendor.packaging.utils import parse_wheel_filename
supported = set(sys_tags())
for path in sys.argv[1:]:
    if parse_wheel_filename(path.rsplit("/", 1)[-1])[3] & supported:
        print(path)
PY
)
"${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" "${wheels[@]}"
stamp "installed ${#wheels[@]} of $(ls .gpu/whl/*.whl | wc -l) carried wheels"
export PYTHONPATH="$site:${ROUTER_FROM:+$PWD/$ROUTER_FROM:}$PWD:$PWD/.gpu/py"
stamp "router from ${ROUTER_FROM:-the working tree}: $(cd /tmp && "${PYTHON:-python3}" -c 'import router; print(router.__file__)')"
[ -d /usr/local/cuda/lib64 ] && export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
"${PYTHON:-python3}" -m bench.gpu --write-model "$@" &
model_writer=$!

parts=(.gpu/artifacts/llama-cpp-gpu.tar.*.part*)
if [ -e "${parts[0]}" ]; then
  stamp "unpacking the carried build (${#parts[@]} parts)"
  rm -rf "$build"
  case ${parts[0]} in *.xz.*) decompress=(xz -d -T0) ;; *) decompress=(gzip -d) ;; esac
  cat "${parts[@]}" | "${decompress[@]}" | tar x -C "$(dirname "$build")"
else
  cuda=(--cuda "${CUDA_ARCHS:-90}")
  [ "${CPU_ONLY:-}" = 1 ] && cuda=()
  stamp "building llama.cpp ${cuda[*]}"
  started=$(date +%s)
  scripts/build_llama_cpp.sh "${cuda[@]}" --source .gpu/llama.cpp-src.tar.gz \
    --jobs "${JOBS:-$(nproc)}" "$build"
  stamp "build took $(( $(date +%s) - started )) s"
  if command -v xz >/dev/null; then compress=(xz -T0 -6); ext=xz; else compress=(gzip -6); ext=gz; fi
  tar c -C "$(dirname "$build")" "$(basename "$build")" | "${compress[@]}" |
    split -b 15m -d -a 1 - "$out/llama-cpp-gpu.tar.$ext.part"
  stamp "packed: $(ls -l "$out" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
fi
ls -l "$build" | tail -n +2 | awk '{print "  " $5, $9}'
wait "$model_writer"

export LLAMA_CPP_LIB_PATH="$build"
stamp "bench"
timeout -s INT "${BENCH_TIMEOUT:-180}" \
  "${PYTHON:-python3}" -m bench.gpu --llama-server "$build/llama-server" --out "$out" "$@"
stamp "done"
