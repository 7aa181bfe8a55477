#!/usr/bin/env bash
# Checks deploy/: shell syntax and shellcheck, the systemd unit, a lint of
# the Dockerfile, and the Slurm script run against stub srun/scontrol that
# record the command line they were given.
set -u
root=${STARRELAY_SOURCE_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

for f in deploy/slurm/starrelay.sbatch deploy/mpi/run-hostfile.sh; do
  if bash -n "$f"; then ok; else bad "bash -n $f"; fi
  if command -v shellcheck >/dev/null; then
    if shellcheck -s bash "$f"; then ok; else bad "shellcheck $f"; fi
  fi
done

if command -v systemd-analyze >/dev/null; then
  # verify wants the unit's user to exist only at run time; it checks the
  # syntax, the directives and that ExecStart's program exists.
  out=$(systemd-analyze verify deploy/systemd/starrelayd.service 2>&1)
  if echo "$out" | grep -Ei "unknown|invalid|failed|not executable|bad" | grep -v "starrelayd.conf" ; then
    bad "systemd-analyze verify: $out"
  else
    ok
  fi
else
  echo "systemd-analyze not present: unit not verified"
fi

python3 - deploy/container/Dockerfile <<'PY' && ok || bad "Dockerfile lint"
import re, sys
known = {"FROM","RUN","CMD","LABEL","EXPOSE","ENV","ADD","COPY","ENTRYPOINT","VOLUME",
         "USER","WORKDIR","ARG","ONBUILD","STOPSIGNAL","HEALTHCHECK","SHELL"}
lines, cur = [], ""
for raw in open(sys.argv[1]):
    line = raw.rstrip("\n")
    if not cur and (not line.strip() or line.lstrip().startswith("#")):
        continue
    cur += line[:-1] + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
        lines.append(cur.strip()); cur = ""
errors = []
if not lines or not lines[0].startswith(("FROM", "ARG")):
    errors.append("the first instruction must be FROM")
stages = set()
for l in lines:
    word = l.split()[0].upper()
    if word not in known:
        errors.append(f"unknown instruction: {l[:40]}")
    if word == "FROM":
        m = re.match(r"FROM\s+(\S+)(\s+AS\s+(\S+))?", l, re.I)
        if not m or ":" not in m.group(1) or m.group(1).endswith(":latest"):
            errors.append(f"pin the base image tag: {l}")
        if m and m.group(3): stages.add(m.group(3))
    if word == "COPY" and "--from=" in l:
        src = re.search(r"--from=(\S+)", l).group(1)
        if src not in stages: errors.append(f"COPY --from unknown stage {src}")
    if word == "RUN" and "apt-get install" in l:
        if " -y" not in l: errors.append("apt-get install without -y")
        if "apt-get update" not in l: errors.append("apt-get install without apt-get update in the same RUN")
        if "rm -rf /var/lib/apt/lists" not in l: errors.append("apt lists not removed")
    if word == "CMD" and not l[3:].strip().startswith("["):
        errors.append("CMD should use the exec (JSON) form")
for e in errors: print("Dockerfile:", e)
sys.exit(1 if errors else 0)
PY

# Slurm: stub scontrol and srun; srun writes its argv, one per line.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
cat > "$tmp/bin/scontrol" <<'STUB'
#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && { echo node-a; echo node-b; exit 0; }
exit 1
STUB
cat > "$tmp/bin/srun" <<'STUB'
#!/usr/bin/env bash
printf '%s\n' "$@" > "$SRUN_RECORD"
STUB
chmod +x "$tmp/bin/"*
out=$(PATH="$tmp/bin:$PATH" SRUN_RECORD="$tmp/srun.args" SLURM_JOB_NODELIST="node-[a-b]" \
      SLURM_NTASKS=16 SLURM_NTASKS_PER_NODE=8 MODEL=/models/llama PORT=50123 \
      EXTRA_ARGS="--kv-budget-tokens 100000" bash deploy/slurm/starrelay.sbatch 2>&1)
rc=$?
if [ $rc -eq 0 ]; then ok; else bad "sbatch script exited $rc: $out"; fi
case "$out" in *"node-a:50123"*) ok ;; *) bad "sbatch did not print the head node and port: $out" ;; esac
args=$(tr '\n' ' ' < "$tmp/srun.args" 2>/dev/null)
for want in "--mpi=pmix" "--gpus-per-task=1" "--gpu-bind=closest" "--ntasks-per-node=8" \
            "starrelayd --model /models/llama --listen 0.0.0.0:50123 --kv-budget-tokens 100000"; do
  case "$args" in *"$want"*) ok ;; *) bad "srun command line lacks '$want': $args" ;; esac
done
# Without MODEL it refuses with a message instead of starting anything.
rm -f "$tmp/srun.args"
out=$(PATH="$tmp/bin:$PATH" SRUN_RECORD="$tmp/srun.args" SLURM_JOB_NODELIST=node-a \
      bash deploy/slurm/starrelay.sbatch 2>&1)
if [ $? -ne 0 ] && [ ! -e "$tmp/srun.args" ] && [[ "$out" == *MODEL* ]]; then ok; else bad "sbatch without MODEL: $out"; fi

echo "deploy_check: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
