# Sourced (not run) by scripts/bootstrap.sh and scripts/build_llama_cpp.sh: the one place that
# says which llama-cpp-python (and so which vendored llama.cpp) we build, and with which CPU flags.
#
# Why the flags: llama.cpp's default (GGML_NATIVE=ON) turns on every instruction set the CPU
# advertises, AMX included. Some CPUs (and many VMs) advertise AMX but trap on it, so that build
# dies with SIGILL at the first quantized matmul. We build with GGML_NATIVE=OFF and switch on, one
# by one, the x86 extensions /proc/cpuinfo lists, never AMX.

LLAMA_CPP_PYTHON_VERSION=0.3.36

# Print the CMake arguments for this machine's CPU (empty where it is not Linux on x86-64).
llama_cpp_cpu_cmake_args() {
  local args="" flags
  if [ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ]; then
    flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    _has() { [[ "$flags" == *" $1 "* ]]; }
    if _has avx; then args+=" -DGGML_AVX=ON"; fi
    if _has avx2; then args+=" -DGGML_AVX2=ON"; fi
    if _has fma; then args+=" -DGGML_FMA=ON"; fi
    if _has f16c; then args+=" -DGGML_F16C=ON"; fi
    if _has bmi2; then args+=" -DGGML_BMI2=ON"; fi
    if _has avx_vnni; then args+=" -DGGML_AVX_VNNI=ON"; fi
    if _has avx512f && _has avx512bw && _has avx512vl && _has avx512dq; then
      args+=" -DGGML_AVX512=ON"
      if _has avx512vbmi; then args+=" -DGGML_AVX512_VBMI=ON"; fi
      if _has avx512_vnni; then args+=" -DGGML_AVX512_VNNI=ON"; fi
      if _has avx512_bf16; then args+=" -DGGML_AVX512_BF16=ON"; fi
    fi
    unset -f _has
  fi
  printf '%s' "$args"
}

# Print a 16-hex-digit cache key for the pinned version built with the CMake arguments "$1".
llama_cpp_cache_key() {
  printf '%s %s' "$LLAMA_CPP_PYTHON_VERSION" "$1" | sha256sum | cut -c1-16
}

# Print the folder that caches the wheel built with the CMake arguments "$1" (bootstrap.sh
# fills it; tests/test_install.py and docs/deploy.md install from it).
llama_cpp_wheel_dir() {
  printf '%s/llama-router/wheels/%s' "${XDG_CACHE_HOME:-$HOME/.cache}" "$(llama_cpp_cache_key "$1")"
}
