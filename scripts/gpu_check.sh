#!/usr/bin/env bash
# On the GPU machine, in one call: build starrelay with the cuda backend,
# run the GPU tests (kernels against the cpu backend, the fixture models
# end to end), the benchmarks (device ceilings, GEMV, decode and prefill
# attention beside torch SDPA, the whole Llama-3.1-8B decode step), then
# compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on the
# kernel tests.
#
#   scripts/gpu_check.sh [build|test|bench|sanitize|profile ...]   (default: all)
#
# Logs go to $OUT (the device tool's folder) or build-gpu/logs: build.log,
# tests.log, bench.log, sanitize.log, profile.log (Nsight Compute on the
# 4K-context decode attention), and summary.md, whose tables end the
# output. With .devdeps carried (../shared/device/fetch-debs.sh), the
# libraries the GPU machine lacks are unpacked first. Exit status: non-zero
# if the build or any test or sanitizer run failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-build-gpu/logs}
mkdir -p "$out"
steps=${*:-build test bench sanitize profile}
want() { [[ " $steps " == *" $1 "* ]]; }
summary=$out/summary.md
status=0

# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-8}

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | sed 's/^/device: /'
  nvcc --version | tail -2 | head -1
  echo
} > "$summary"

# Only the GPU targets: the rest of the tree is built and tested in CI.
dir=build-gpu
if want build; then
  t0=$SECONDS
  { [ -d "$dir" ] || meson setup "$dir" -Dcuda=enabled -Dgrpc=disabled; } > "$out/build.log" 2>&1 &&
    ninja -C "$dir" tests/gpu/test_cuda_ops tests/gpu/test_cuda_forward tests/gpu/test_cuda_sample \
      tests/gpu/gpu_bench \
      tests/gpu/gpu_decode_step daemon/starrelayd >> "$out/build.log" 2>&1
  rc=$?
  echo "build: rc=$rc in $((SECONDS - t0)) s" | tee -a "$summary"
  if [ $rc -ne 0 ]; then
    tail -40 "$out/build.log"
    exit 1
  fi
fi

if want test; then
  t0=$SECONDS
  timeout 360 meson test -C "$dir" --suite gpu --print-errorlogs --no-rebuild > "$out/tests.log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && status=1
  # the tests' own output: errors and the measured errors
  cat "$dir/meson-logs/testlog.txt" >> "$out/tests.log" 2>/dev/null
  echo "gpu tests: rc=$rc in $((SECONDS - t0)) s" | tee -a "$summary"
  grep -E "^ *[0-9]+/[0-9]+ .*(OK|FAIL|SKIP|TIMEOUT)" "$out/tests.log" | sed 's/^/    /' | tee -a "$summary"
  grep -E "rel err|tokens equal|passed, |^(ok  |FAIL)" "$dir/meson-logs/testlog.txt" | sort -u | sed 's/^/    /' >> "$summary"
fi

if want bench; then
  t0=$SECONDS
  {
    timeout 300 "$dir/tests/gpu/gpu_bench"
    echo "gpu_bench rc=$?"
    PYTHONUNBUFFERED=1 timeout 240 python3 bench/gpu_sdpa.py
    echo "gpu_sdpa rc=$?"
    timeout 420 "$dir/tests/gpu/gpu_decode_step" bench/models/llama-3.1-8b 512 4096 32768
    echo "gpu_decode_step rc=$?"
  } > "$out/bench.log" 2>&1
  echo "benches: $((SECONDS - t0)) s" >> "$summary"
  grep -E "^\||rc=|on NVIDIA|on H|copy bandwidth" "$out/bench.log" >> "$summary"
fi

if want sanitize; then
  t0=$SECONDS
  : > "$out/sanitize.log"
  for tool in memcheck racecheck synccheck initcheck; do
    SR_TEST_QUICK=1 timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$dir/tests/gpu/test_cuda_ops" >> "$out/sanitize.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    echo "compute-sanitizer $tool on test_cuda_ops (quick shapes): rc=$rc" | tee -a "$summary"
  done
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed, " "$out/sanitize.log" | sed 's/^/    /' >> "$summary"
  echo "sanitizers: $((SECONDS - t0)) s" >> "$summary"
fi

if want profile; then
  # The split-key kernel and its merge at 4K keys (the 4th call of the
  # decode bench, after its warm-up): where the small-context time goes.
  timeout 180 ncu --clock-control none -k regex:"attn_split_kernel|merge_kernel" \
    --launch-skip 6 --launch-count 2 --section SpeedOfLight --section Occupancy \
    --section LaunchStats "$dir/tests/gpu/gpu_bench" decode > "$out/profile.log" 2>&1
  echo "ncu on the 4K decode attention: rc=$?" >> "$summary"
  grep -E "attn_split_kernel|merge_kernel|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Grid Size|Block Limit Reg" \
    "$out/profile.log" | sed 's/^ */    /' >> "$summary"
fi

cat "$summary"
exit $status
