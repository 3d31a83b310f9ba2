#!/usr/bin/env bash
# The one script for the GPU machine: install, import the extension, CUDA tests, headline benchmarks.
#
#   bash benchmarks/gpu_check.sh            # from anywhere; OUT=/tmp/dk_out unless set
#
# Ends within ~8 minutes (GPU_CHECK_BUDGET_S, default 470 s): every step runs under `timeout`, a
# benchmark step that no longer fits is skipped. It continues past a failing step and exits 1 at
# the end if any step failed or was skipped (0 otherwise); the summary table comes last.
# Files in $OUT (no subfolders, at most 8): gpu_check.log (everything printed), install.log,
# pytest_cuda.log, pytest_cuda.xml (junit), sanitizer.log (compute-sanitizer reports), bench.log
# (sweep output), sweep_gpu.csv (benchmark rows).
#
# Knobs (environment): OUT, GPU_CHECK_BUDGET_S, GPU_CHECK_PROVIDERS (e.g. "eager torch triton cuda"
# to leave out compile and lightly when time is short; default: every provider that applies),
# GPU_CHECK_SANITIZER_S (each compute-sanitizer run's limit, default 180; 0 leaves them out),
# DK_GIT_SHA (recorded in the CSV when the copy has no .git), MAX_JOBS, TORCH_CUDA_ARCH_LIST.
# Third-party providers: wheels in .wheels/ (lightly 1.6.0 + hydra-core, omegaconf,
# antlr4-python3-runtime; inf-cl 1.2.1; siglip-kernel) are installed with --no-deps when present. The folder is
# git-ignored: name it in the device tool's `carry`.
set -euo pipefail

OUT=${OUT:-/tmp/dk_out}
mkdir -p "$OUT"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
PY=${PYTHON:-python}
CSV="$OUT/sweep_gpu.csv"
PROVIDERS=()
if [[ -n "${GPU_CHECK_PROVIDERS:-}" ]]; then
    read -r -a PROVIDERS <<<"$GPU_CHECK_PROVIDERS"
fi

exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!

T0=$SECONDS
NAMES=()
STATUS=()
TIMES=()
FAILED=0

remaining() { echo $((BUDGET_S - (SECONDS - T0))); }

# step NAME LIMIT_S LOG -- command...   (LOG "-" = console only; else appended to LOG and console)
step() {
    local name=$1 limit=$2 log=$3
    shift 4
    local left; left=$(remaining)
    if ((left - 10 < limit)); then limit=$((left - 10)); fi
    if ((limit < 20)); then
        echo "=== [skip] $name: only ${left}s of the ${BUDGET_S}s budget left"
        NAMES+=("$name"); STATUS+=("SKIPPED (time)"); TIMES+=(0); FAILED=1
        return 0
    fi
    echo "=== [$(date -u +%H:%M:%S)] $name (timeout ${limit}s)"
    local t=$SECONDS rc=0
    if [[ $log == - ]]; then
        timeout -k 15 "$limit" "$@" || rc=$?
    else
        { timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$log"; } || rc=$?
    fi
    local dt=$((SECONDS - t)) st
    case $rc in
        0) st="ok" ;;
        124 | 137) st="TIMEOUT"; FAILED=1 ;;
        *) st="FAIL (rc $rc)"; FAILED=1 ;;
    esac
    echo "=== $name: $st in ${dt}s"
    NAMES+=("$name"); STATUS+=("$st"); TIMES+=("$dt")
    return 0
}

echo "gpu_check: $(date -u '+%Y-%m-%dT%H:%M:%SZ') in $ROOT, OUT=$OUT, budget ${BUDGET_S}s"
if [[ -z "${DK_GIT_SHA:-}" ]] && ! git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
    echo "note: no git metadata here and DK_GIT_SHA unset: the CSV records git_sha=unknown"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
$PY -c 'import sys, torch, triton; print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__, "| cuda", torch.version.cuda, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")' || true

# 1. third-party wheels (optional), then the package itself
if compgen -G ".wheels/*.whl" >/dev/null; then
    step "wheels (.wheels/*.whl)" 120 "$OUT/install.log" -- \
        $PY -m pip install --no-index --no-deps --no-cache-dir .wheels/*.whl
fi
step "pip install -e . (install.log)" 300 - -- \
    bash -c "$PY -m pip install --no-index --no-build-isolation --no-deps -v -e . >>'$OUT/install.log' 2>&1 || { tail -n 40 '$OUT/install.log'; exit 1; }"
step "import duality_kernels._C" 60 - -- \
    $PY -c "import duality_kernels, duality_kernels._C as C; print('ok:', C.__file__)"

# 2. CUDA tests in parallel shards, and compute-sanitizer alongside them (2a, 2c).

# 2a. compute-sanitizer runs in the background while the test shards run (the machine has 16 cores;
#     the reports are about correctness, so sharing the GPU costs nothing): memcheck, racecheck and
#     synccheck over small calls of every CUDA-backend op (benchmarks/sanitize_calls.py: fp32,
#     bf16, fp16 at 130x70 and 9x300, forward and backward), and memcheck over one call of each
#     public Triton function (every Triton kernel). racecheck and synccheck instrument our kernels
#     only (--kernel-name kns=duality_kernels): they are about shared memory and barriers, and
#     cuBLAS's kernels would take them minutes. memcheck instruments every kernel, with torch's
#     caching allocator off so that an access past a tensor's end leaves its allocation.
#     Each run is limited to GPU_CHECK_SANITIZER_S and to the test shards' limit, so the pair
#     together stays within that limit.
SAN=$(command -v compute-sanitizer || true)
for c in "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer /usr/local/cuda*/bin/compute-sanitizer; do
    if [[ -z $SAN && -x $c ]]; then SAN=$c; fi
done
SAN_S=${GPU_CHECK_SANITIZER_S:-180}
SAN_NAMES=(); SAN_PIDS=()
san_start() {  # san_start NAME LIMIT_S sanitizer-args... -- script-args...  (background)
    local name=$1 limit=$2
    shift 2
    local opts=() envs=()
    while [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift
    if [[ ${opts[*]} == *memcheck* ]]; then envs=(PYTORCH_NO_CUDA_MEMORY_CACHING=1); fi
    env "${envs[@]}" timeout -k 10 "$limit" "$SAN" "${opts[@]}" --print-limit 20 --error-exitcode 3 \
        "$PY" benchmarks/sanitize_calls.py "$@" >"$OUT/tmp_san_$name.log" 2>&1 &
    SAN_PIDS+=($!); SAN_NAMES+=("$name")
}

# 2b. the CUDA tests in parallel shards: most of their time is Triton compiling kernel variants,
#    one at a time per process. The cuda-marked test ids are collected once and cut into
#    GPU_CHECK_SHARDS contiguous chunks (neighbouring tests share kernel variants), each run by
#    its own pytest process. (no test collected: reported, not a failure)
left=$(remaining); lim=$((left - 10 < 240 ? left - 10 : 240))
SHARDS=${GPU_CHECK_SHARDS:-12}
san_lim=$((SAN_S < lim - 5 ? SAN_S : lim - 5))
if ((SAN_S > 0 && lim >= 30)) && [[ -n $SAN ]]; then
    echo "=== [$(date -u +%H:%M:%S)] compute-sanitizer in the background ($SAN, timeout ${san_lim}s each)"
    SAN_T0=$SECONDS
    san_start "memcheck-cuda" "$san_lim" --tool memcheck -- --backend cuda
    san_start "racecheck-cuda" "$san_lim" --tool racecheck --kernel-name kns=duality_kernels -- --backend cuda
    san_start "synccheck-cuda" "$san_lim" --tool synccheck --kernel-name kns=duality_kernels -- --backend cuda
    san_start "memcheck-triton" "$san_lim" --tool memcheck -- --backend triton
elif ((SAN_S > 0)); then
    echo "=== [skip] compute-sanitizer: ${SAN:+only ${left}s left}${SAN:-not found (PATH, CUDA_HOME, /usr/local/cuda*)}"
    NAMES+=("compute-sanitizer"); STATUS+=("SKIPPED"); TIMES+=(0); FAILED=1
fi
if ((lim < 30)); then
    echo "=== [skip] pytest -m cuda: only ${left}s left"
    NAMES+=("pytest -m cuda"); STATUS+=("SKIPPED (time)"); TIMES+=(0); FAILED=1
else
    echo "=== [$(date -u +%H:%M:%S)] pytest -m cuda in $SHARDS shards (timeout ${lim}s)"
    t=$SECONDS
    $PY -m pytest -m cuda --collect-only -q -p no:cacheprovider 2>/dev/null | grep '::' >"$OUT/tmp_ids.txt" || true
    total=$(wc -l <"$OUT/tmp_ids.txt")
    echo "  $total cuda tests"
    st="ok"; npassed=0
    if ((total == 0)); then
        st="no tests collected"
    else
        per=$(((total + SHARDS - 1) / SHARDS))
        split -l "$per" -d -a 2 "$OUT/tmp_ids.txt" "$OUT/tmp_shard_"
        PIDS=(); SHARD_FILES=("$OUT"/tmp_shard_*)
        for f in "${SHARD_FILES[@]}"; do
            b=$(basename "$f")
            # xargs: one test id per line as one argument (ids may contain brackets and dashes)
            timeout -k 15 "$((lim - 5))" xargs -a "$f" -d '\n' $PY -m pytest -q -p no:cacheprovider \
                --junitxml="$OUT/tmp_junit_$b.xml" >"$OUT/tmp_log_$b.log" 2>&1 &
            PIDS+=($!)
        done
        for i in "${!PIDS[@]}"; do
            rc=0; wait "${PIDS[$i]}" || rc=$?
            b=$(basename "${SHARD_FILES[$i]}")
            { echo "----- shard $b (rc $rc)"; cat "$OUT/tmp_log_$b.log"; } >>"$OUT/pytest_cuda.log"
            echo "  $b: $(tail -n 1 "$OUT/tmp_log_$b.log")"
            if grep -q " passed" "$OUT/tmp_log_$b.log"; then npassed=$((npassed + 1)); fi
            case $rc in
                0) ;;
                124 | 137) st="TIMEOUT"; FAILED=1 ;;
                *) [[ $st == ok ]] && st="FAIL (rc $rc in shard $b)"; FAILED=1 ;;
            esac
        done
        grep -h -E "^(FAILED|ERROR) " "$OUT"/tmp_log_*.log | sed 's/^/  /' || true
        # one junit file: the shards' files concatenated inside a <testsuites> root
        { echo '<?xml version="1.0" encoding="utf-8"?><testsuites>'
          for x in "$OUT"/tmp_junit_*.xml; do [[ -s $x ]] && sed -e 's/<?xml[^>]*?>//' -e 's|<testsuites[^>]*>||g' -e 's|</testsuites>||g' "$x"; done
          echo '</testsuites>'; } >"$OUT/pytest_cuda.xml"
        # every CUDA test skipped on the GPU machine means the GPU or the build went missing
        if [[ $st == ok ]] && ((npassed == 0)); then st="ALL SKIPPED"; FAILED=1; fi
    fi
    rm -f "$OUT"/tmp_ids.txt "$OUT"/tmp_shard_* "$OUT"/tmp_junit_*.xml "$OUT"/tmp_log_*.log
    NAMES+=("pytest -m cuda"); STATUS+=("$st"); TIMES+=($((SECONDS - t)))
    echo "=== pytest -m cuda: $st in $((SECONDS - t))s"
fi

# 2c. the sanitizer runs: each tool's error summary, the reports in sanitizer.log
if ((${#SAN_PIDS[@]})); then
    for i in "${!SAN_PIDS[@]}"; do
        rc=0; wait "${SAN_PIDS[$i]}" || rc=$?
        name=${SAN_NAMES[$i]}; log="$OUT/tmp_san_$name.log"
        # no summary when the run was killed or the program failed first (set -e: keep going)
        summary=$({ grep -h "ERROR SUMMARY" "$log" || true; } | tail -n 1 | sed 's/^=* *//')
        case $rc in
            0) st="ok" ;;
            3) st="ERRORS"; FAILED=1 ;;
            124 | 137) st="TIMEOUT"; FAILED=1 ;;
            *) st="FAIL (rc $rc)"; FAILED=1 ;;
        esac
        echo "  compute-sanitizer $name: $st: ${summary:-no error summary (see sanitizer.log)}"
        { echo "----- $name (rc $rc)"; cat "$log"; } >>"$OUT/sanitizer.log"
        NAMES+=("sanitizer $name"); STATUS+=("$st"); TIMES+=($((SECONDS - SAN_T0)))  # at most
    done
    rm -f "$OUT"/tmp_san_*.log
fi

# 3. headline benchmarks (shapes of the issues), most important first
bench() {  # bench NAME LIMIT_S sweep-args...
    local name=$1 limit=$2
    shift 2
    local extra=()
    if ((${#PROVIDERS[@]})); then extra=(--providers "${PROVIDERS[@]}"); fi
    step "bench $name" "$limit" "$OUT/bench.log" -- \
        $PY benchmarks/sweep.py --device cuda --csv "$CSV" --no-plot "$@" "${extra[@]}"
}
bench "vicreg bf16"          120 --loss vicreg --dtype bfloat16 --shapes 2048x8192 2048x256 16384x2048
bench "vicreg fp32 high"      60 --loss vicreg --dtype float32 --precision high --shapes 2048x8192
bench "vicreg fp32 highest"   60 --loss vicreg --dtype float32 --precision highest --shapes 2048x8192
bench "barlow bf16"           60 --loss barlow --dtype bfloat16 --shapes 2048x8192
bench "spectral bf16"         60 --loss spectral --dtype bfloat16 --shapes 16384x256
bench "ntxent bf16"           90 --loss ntxent --dtype bfloat16 --shapes 2048x256 16384x256
bench "ntxent bf16 65536"     60 --loss ntxent --dtype bfloat16 --shapes 65536x256 --providers triton
bench "infonce fp32 high"     60 --loss infonce --dtype float32 --precision high --shapes 32768x256
# the crossover table: cuda vs triton over the sweep grid (rows per point in the CSV)
bench "crossover vicreg bf16" 90 --loss vicreg --dtype bfloat16 --providers triton cuda \
    --N 256 1024 4096 16384 --D 256 1024 4096

# 4. summary: the benchmark rows, then the steps
if [[ -s "$CSV" ]]; then
    echo
    $PY benchmarks/sweep.py --summarize "$CSV" || true
fi
echo
echo "==================== gpu_check summary ($((SECONDS - T0))s of ${BUDGET_S}s) ===================="
for i in "${!NAMES[@]}"; do
    printf '  %-34s %-20s %5ss\n' "${NAMES[$i]}" "${STATUS[$i]}" "${TIMES[$i]}"
done
echo "files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
if ((FAILED)); then echo "gpu_check: FAILED (see the steps above)"; else echo "gpu_check: all steps ok"; fi

# let tee write the last lines before the script ends
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null || true
exit "$FAILED"
