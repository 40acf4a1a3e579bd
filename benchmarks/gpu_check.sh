#!/usr/bin/env bash
# Verify fused_optim on a machine with an NVIDIA GPU, from a plain checkout (nothing installed, no
# package registry needed: torch, triton and pytest must be importable; the C++ extension is
# JIT-built if a compiler and ninja are there, and is not needed for CUDA tensors).
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Steps, each under a time limit so the whole run stays under 8 minutes (7.5 in all, from a
# shared deadline: a step that ends early leaves its time to the later ones):
#   1. fused-optim info            -> OUT_DIR/info.json
#   2. the CUDA tests (pytest -k cuda) -> OUT_DIR/tests.xml
#   3. fused-optim check on CUDA   -> OUT_DIR/check.json
#   4. fused-optim bench on CUDA, fixed sizes -> OUT_DIR/bench.json, bench.txt (table), bench.png
# Everything printed goes to OUT_DIR/log.txt; OUT_DIR/summary.txt has one line per step.
# Exit status: 0 when every step passed, 1 when one failed or timed out, 2 for bad usage,
# 3 when there is no CUDA device (or no torch) to verify.
set -uo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1" || { echo "error: cannot create the output folder $1" >&2; exit 2; }
OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a step stopped by its time limit still leaves its output in the log
DEADLINE=$((SECONDS + 450))
LOG="$OUT/log.txt"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }

# limit CAP RESERVE: seconds for the next step: CAP, or less so RESERVE seconds remain for later steps
limit() {
    local left=$((DEADLINE - SECONDS - $2))
    if [ "$left" -lt "$1" ]; then echo $((left > 10 ? left : 10)); else echo "$1"; fi
}

# record NAME RC SECONDS LIMIT: one summary line per step
record() {
    local verdict
    case $2 in
        0) verdict="ok" ;;
        124|137) verdict="TIMED OUT after $4 s" ;;
        *) verdict="FAILED (exit $2)" ;;
    esac
    [ "$2" -eq 0 ] || FAILED=1
    printf '%-8s %s in %d s\n' "$1" "$verdict" "$3" | tee -a "$SUMMARY" >>"$LOG"
}

# step NAME LIMIT_SECONDS COMMAND...: run it, output to the console and the log
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    say "== $name (limit ${limit} s): $*"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    record "$name" "${PIPESTATUS[0]}" $((SECONDS - start)) "$limit"
}

say "fused_optim GPU check: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), checkout $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
say "python: ${PYTHON:-none found}"
if ! timeout 60 "$PYTHON" - >>"$LOG" 2>&1 <<'EOF'
import sys
try:
    import torch
except Exception as error:
    print(f"error: cannot import torch with {sys.executable}: {error}")
    sys.exit(3)
if not torch.cuda.is_available():
    why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
    print(f"error: no CUDA device ({why}; torch {torch.__version__}): this script verifies fused_optim on an NVIDIA GPU")
    sys.exit(3)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF
then
    tail -n 1 "$LOG" >&2
    echo "preflight FAILED: no CUDA device to verify (see $LOG)" >>"$SUMMARY"
    exit 3
fi
tail -n 1 "$LOG"

# info loads the C++ extension, JIT-building it on a fresh machine (most of its time limit).
step info "$(limit 90 330)" "$PYTHON" -m fused_optim info --json "$OUT/info.json"
if ! "$PYTHON" -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1]))["environment"]["cpp_extension"]["loaded"])' \
        "$OUT/info.json" 2>/dev/null; then
    # It serves CPU tensors only; without this, every later step would try to build it again.
    say "the C++ extension is not available (see info above): later steps run with FUSED_OPTIM_DISABLE_CPP=1"
    export FUSED_OPTIM_DISABLE_CPP=1
fi
step tests "$(limit 180 200)" "$PYTHON" -m pytest tests -k cuda -q -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/tests.xml"
# One line of counts from the JUnit report: a missing optional test dependency (hypothesis,
# scikit-learn) shows there as errors, apart from failing tests.
"$PYTHON" - "$OUT/tests.xml" <<'EOF' 2>&1 | tee -a "$SUMMARY" >>"$LOG"
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as error:
    print(f"         no test report ({error})")
    sys.exit()
suite = root if root.tag == "testsuite" else root.find("testsuite")
tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"         {tests - failures - errors - skipped} passed, {failures} failed, {errors} errors, {skipped} skipped")
EOF
step check "$(limit 70 130)" "$PYTHON" -m fused_optim check --device cuda --json "$OUT/check.json"

PLOT=()
if "$PYTHON" -c "import matplotlib" >/dev/null 2>&1; then
    PLOT=(--plot "$OUT/bench.png")
fi
BENCH_LIMIT=$(limit 180 0)
start=$SECONDS
say "== bench (limit $BENCH_LIMIT s): fused-optim bench --device cuda"
timeout --kill-after=5 "$BENCH_LIMIT" "$PYTHON" -m fused_optim bench --device cuda --json "$OUT/bench.json" "${PLOT[@]}" \
    2>>"$LOG" | tee "$OUT/bench.txt" | tee -a "$LOG"
record bench "${PIPESTATUS[0]}" $((SECONDS - start)) "$BENCH_LIMIT"

echo
echo "summary ($OUT):"
cat "$SUMMARY"
sed -n '/^targets:/,/^$/p' "$OUT/bench.txt"
grep -E '^(passed|FAILED)' "$LOG" || true
exit $FAILED
