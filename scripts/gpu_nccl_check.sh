#!/usr/bin/env bash
# On a machine with 2+ GPUs, in one call: build starrelayd with the cuda
# backend and NCCL (build-gpu), run the NCCL data plane test
# (tests/gpu/mpi_nccl.sh: 2 ranks over NCCL against 1 rank, through
# `starrelayd run` and `starrelayd batch`, failures included) and the
# --dataplane checks that need no GPU (tests/mpi_dataplane.sh), and print a
# summary.
#
#   scripts/gpu_nccl_check.sh
#
# Logs go to $OUT (the device tool's folder) or build-gpu/logs:
# nccl_build.log, nccl_tests.log and nccl_summary.md, which ends the output.
# With .devdeps carried (../shared/device/fetch-debs.sh), the libraries the
# GPU machine lacks are unpacked first. Exit status: non-zero if the build
# or a test failed, or NCCL was not found (the test would only skip).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-build-gpu/logs}
mkdir -p "$out"
summary=$out/nccl_summary.md
status=0

# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-4}

{
  echo "# NCCL data plane check $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  nvidia-smi -L 2>&1 | sed 's/^/    /'
  echo
  echo "    $(nvcc --version | tail -2 | head -1)"
  # How the GPUs reach each other (NVLink, PCIe): what NCCL will use.
  nvidia-smi topo -m 2>&1 | head -8 | sed 's/^/    /'
  echo
} > "$summary"

dir=build-gpu
t0=$SECONDS
{ [ -d "$dir" ] || meson setup "$dir" -Dcuda=enabled -Dgrpc=disabled; } > "$out/nccl_build.log" 2>&1 &&
  ninja -C "$dir" daemon/starrelayd >> "$out/nccl_build.log" 2>&1
rc=$?
echo "build: rc=$rc in $((SECONDS - t0)) s" | tee -a "$summary"
if [ $rc -ne 0 ]; then
  tail -40 "$out/nccl_build.log"
  exit 1
fi
if ldd "$dir/daemon/starrelayd" | grep -q libnccl; then
  echo "nccl: $(ldd "$dir/daemon/starrelayd" | grep libnccl | sed 's/^[[:space:]]*//')" | tee -a "$summary"
else
  echo "nccl: NOT linked (meson did not find nccl.h and libnccl; see $dir/meson-logs/meson-log.txt)" |
    tee -a "$summary"
  grep -i nccl "$dir/meson-logs/meson-log.txt" | tail -5 | sed 's/^/    /' | tee -a "$summary"
  status=1
fi

t0=$SECONDS
timeout 1200 meson test -C "$dir" mpi_nccl mpi_dataplane --print-errorlogs --no-rebuild \
  > "$out/nccl_tests.log" 2>&1
rc=$?
[ $rc -ne 0 ] && status=1
cat "$dir/meson-logs/testlog.txt" >> "$out/nccl_tests.log" 2>/dev/null
echo "tests: rc=$rc in $((SECONDS - t0)) s" | tee -a "$summary"
grep -E "^ *[0-9]+/[0-9]+ .*(OK|FAIL|SKIP|TIMEOUT)" "$out/nccl_tests.log" | sed 's/^/    /' |
  tee -a "$summary"
# the tests' own lines: each comparison, each failure, NCCL's warnings
grep -E "^(ok  |FAIL|SKIP)|passed, |starrelayd run:|NCCL WARN" "$dir/meson-logs/testlog.txt" |
  sort -u | head -60 | sed 's/^/    /' >> "$summary"

cat "$summary"
exit $status
