#!/usr/bin/env bash
# Builds starrelay with AddressSanitizer/UBSan and runs the whole CPU test
# suite (unit, fixture-vs-transformers, MPI). The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# Open MPI keeps process-lifetime allocations that LeakSanitizer would
# report: tests/lsan.supp names its libraries (full stacks are needed to see
# them, hence the slow unwinder); leaks in our own code are still reported.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:fast_unwind_on_malloc=0:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
dir=build-test
[ -d "$dir" ] || meson setup "$dir" -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
ninja -C "$dir"
set +e
meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" | tee "$dir/test-summary.txt"
rc=${PIPESTATUS[0]}
set -e
ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$dir/test-summary.txt")
fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$dir/test-summary.txt")
skip=$(sed -n 's/^Skipped: *\([0-9]*\).*/\1/p' "$dir/test-summary.txt")
to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$dir/test-summary.txt")
echo "${ok:-0} passed, $(( ${fail:-0} + ${to:-0} )) failed, ${skip:-0} skipped"
exit "$rc"
