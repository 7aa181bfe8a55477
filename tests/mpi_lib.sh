# Shared by the tests/mpi_*.sh end-to-end tests (sourced, not run).
#
# Usage in a test: . "$(dirname "$0")/mpi_lib.sh" "$@"   (argument 1: starrelayd)
#
#   sr_run NAME NP ARGS...   runs `starrelayd run ARGS --json --logits-out ...`
#                            on NP ranks (NP 0: plain process, no mpirun) into
#                            $SR_TMP/NAME.{json,logits,err}; returns its exit code
#                            (stdin is /dev/null: mpirun would forward it);
#                            SR_EXPECT_FAIL=1 keeps a failing run quiet
#   sr_same A B TOL WHAT     checks run B against run A: logits within TOL
#                            relative (max|a-b| / max|a|) and the same token ids
#   sr_check COND WHAT       records a failure unless the shell test COND holds
#   sr_finish                prints the tally and exits (0, 1, or 77 = skipped)
#
# Ranks share the 2 cores of a CI machine, so BLAS and OpenMP run one thread
# each and mpirun may oversubscribe; tests run as root in containers.
set -u
SR_DAEMON=${1:?usage: $0 path/to/starrelayd}
SR_ROOT=${STARRELAY_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$SR_ROOT" || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
SR_MPIRUN=${SR_MPIRUN:-mpirun}
SR_MPIRUN_ARGS=${SR_MPIRUN_ARGS:---oversubscribe --bind-to none}
SR_TIMEOUT=${SR_TIMEOUT:-120}
SR_TMP=$(mktemp -d)
trap 'rm -rf "$SR_TMP"' EXIT
SR_PASS=0
SR_FAIL=0

if ! command -v "$SR_MPIRUN" >/dev/null 2>&1; then
    echo "SKIP: $SR_MPIRUN not found"
    exit 77
fi

sr_run() {
    local name=$1 np=$2
    shift 2
    local launch=()
    if [ "$np" -gt 0 ]; then
        # shellcheck disable=SC2206
        launch=(timeout "$SR_TIMEOUT" "$SR_MPIRUN" $SR_MPIRUN_ARGS -np "$np")
    else
        launch=(timeout "$SR_TIMEOUT")
    fi
    "${launch[@]}" "$SR_DAEMON" run "$@" --json --logits-out "$SR_TMP/$name.logits" \
        </dev/null >"$SR_TMP/$name.json" 2>"$SR_TMP/$name.err"
    local rc=$?
    if [ $rc -ne 0 ] && [ -z "${SR_EXPECT_FAIL:-}" ]; then
        echo "run $name (np $np) exited $rc: $*" >&2
        grep -v ' INFO ' "$SR_TMP/$name.err" | head -5 >&2
    fi
    return $rc
}

sr_check() {
    if eval "$1"; then
        SR_PASS=$((SR_PASS + 1))
    else
        SR_FAIL=$((SR_FAIL + 1))
        echo "FAIL: $2" >&2
    fi
}

# Compares two runs; prints one line per comparison.
sr_same() {
    local a=$1 b=$2 tol=$3 what=$4
    if python3 - "$SR_TMP/$a" "$SR_TMP/$b" "$tol" "$what" <<'EOF'; then
import json, sys
a, b, tol, what = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
def load(p):
    # stdout must be exactly one JSON object: other ranks print nothing
    with open(p + ".json") as f:
        out = json.loads(f.read())
    with open(p + ".logits") as f:
        return out, json.load(f)
(ja, la), (jb, lb) = load(a), load(b)
rel = max(abs(x - y) for x, y in zip(la, lb)) / max(abs(x) for x in la)
ok = len(la) == len(lb) and rel <= tol and ja["token_ids"] == jb["token_ids"]
print("%s %s: logits rel %.2e (tol %g), tokens %s" %
      ("ok  " if ok else "FAIL", what, rel, tol, "equal" if ja["token_ids"] == jb["token_ids"]
       else "%s vs %s" % (ja["token_ids"], jb["token_ids"])))
sys.exit(0 if ok else 1)
EOF
        SR_PASS=$((SR_PASS + 1))
    else
        SR_FAIL=$((SR_FAIL + 1))
    fi
}

# Runs and compares in one go: sr_expect REF NAME NP TOL WHAT ARGS...
sr_expect() {
    local ref=$1 name=$2 np=$3 tol=$4 what=$5
    shift 5
    if sr_run "$name" "$np" "$@"; then
        sr_same "$ref" "$name" "$tol" "$what"
    else
        SR_FAIL=$((SR_FAIL + 1))
        echo "FAIL $what: run failed" >&2
    fi
}

sr_finish() {
    echo "$(basename "$0"): $SR_PASS passed, $SR_FAIL failed"
    [ "$SR_FAIL" -eq 0 ]
    exit $?
}
