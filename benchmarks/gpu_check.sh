#!/usr/bin/env bash
# The GPU path checked in one go (docs/distributed.md, "The GPU path").
#
#   bash benchmarks/gpu_check.sh [--dry] [DIR]
#
# From the repository's root after `pip install -e .` (with the test extra), on a
# machine with a CUDA GPU:
#   a. the GPU, its driver, PyTorch, CUDA, cuDNN and NCCL versions, and TF32's settings;
#   b. python -m pytest -q -m cuda tests/test_cuda.py;
#   c. transformer-makemore (torch-module) on cuda in bfloat16 for a fixed number of
#      steps: tokens/s from the run's own steps/s (and float32's, beside it);
#   d. the same in float16, with its GradScaler: the loss scale the run checkpointed;
#   e. a checkpoint written on the GPU resumed on the CPU (--resume --device cpu);
#   f. torchrun --nproc_per_node 1 against the single-process run, and NCCL's
#      all-reduce on the GPU (a one-process group that takes the several-process path).
# Then ONE summary block: each check ok / FAILED / skipped, with its figure; the exit
# status is 1 if any check FAILED.
#
# Everything is written under DIR (default: $OUT if set, else a new mktemp directory):
# a log per command, the run directories, summary.txt. Nothing prompts. The step counts
# are kept so that the whole takes a few minutes on one H200, and every command has a
# time limit within an overall budget (GPU_CHECK_BUDGET, 420 s).
#
# --dry, or no CUDA GPU: print what would run, run nothing, and show the summary with
# every check skipped. Settings (environment): PYTHON (python), GPU_CHECK_DEVICE (cuda;
# cpu rehearses the commands on a CPU), GPU_CHECK_BF16_STEPS (1500), GPU_CHECK_FP16_STEPS
# (1000), GPU_CHECK_MOVE_STEPS (300 on the GPU, then 100 more on the CPU),
# GPU_CHECK_DDP_STEPS (300), GPU_CHECK_BUDGET (420).

set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

PY=${PYTHON:-python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BF16_STEPS=${GPU_CHECK_BF16_STEPS:-1500}
FP16_STEPS=${GPU_CHECK_FP16_STEPS:-1000}
MOVE_STEPS=${GPU_CHECK_MOVE_STEPS:-300}
DDP_STEPS=${GPU_CHECK_DDP_STEPS:-300}
BUDGET=${GPU_CHECK_BUDGET:-420}

DRY=0
DIR=""
for arg in "$@"; do
    case $arg in
        --dry) DRY=1 ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check: unknown option $arg (usage: gpu_check.sh [--dry] [DIR])" >&2; exit 2 ;;
        *) DIR=$arg ;;
    esac
done
DIR=${DIR:-${OUT:-}}
if [ -z "$DIR" ]; then
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
fi
mkdir -p "$DIR" || exit 2
DIR=$(cd "$DIR" && pwd)
SUMMARY_FILE=$DIR/summary.txt

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1

WHY_DRY=""
if [ "$DRY" = 1 ]; then
    WHY_DRY="--dry"
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
        && [ "$DEVICE" != cpu ]; then
    DRY=1
    WHY_DRY="no CUDA GPU that PyTorch can use"
fi

RECIPE=(--recipe transformer-makemore --backend torch-module -n 0)
START=$SECONDS
CHECKS=()
STATUS=()
FIGURES=()
FAILED=0

record() {  # record ID NAME STATUS FIGURE
    CHECKS+=("$1  $(printf '%-22s' "$2")")
    STATUS+=("$3")
    FIGURES+=("$4")
    [ "$3" = FAILED ] && FAILED=$((FAILED + 1))
    return 0
}

# run LOG CAP CMD...: CMD with its output in LOG, within CAP seconds and what is left of the
# budget; in a dry run only said. Returns CMD's status (124: out of time; 99: dry).
run() {
    local log=$1 cap=$2
    shift 2
    printf '  $'; printf ' %q' "$@"; printf '\n'
    if [ "$DRY" = 1 ]; then
        return 99
    fi
    local left=$((BUDGET - (SECONDS - START)))
    [ "$left" -lt "$cap" ] && cap=$left
    if [ "$cap" -lt 15 ]; then
        echo "    (not run: the budget of $BUDGET s is spent)" | tee -a "$log"
        return 124
    fi
    local t0=$SECONDS rc
    timeout -k 10 "$cap" "$@" >"$log" 2>&1
    rc=$?
    echo "    -> exit $rc in $((SECONDS - t0)) s (limit $cap s; log $log)"
    [ "$rc" = 124 ] && echo "gpu_check: stopped after $cap s" >>"$log"
    return "$rc"
}

# figure MODE ARGS...: "STATUS<TAB>FIGURE" for a check, from its run directories and logs.
figure() {
    "$PY" - "$@" <<'EOF'
import json, re, sys
from pathlib import Path

mode, args = sys.argv[1], sys.argv[2:]


def metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def vals(run):
    return [(r["step"], r["val_loss"]) for r in metrics(run) if "val_loss" in r]


def config(run):
    return json.loads((Path(run) / "config.json").read_text())


def text(log):
    return Path(log).read_text(errors="replace")


def speed(run, log):
    """steps/s of the run's last evaluation line (its own count since it began), as tokens."""
    rates = re.findall(r"\| ([\d.]+) steps/s", text(log))
    done = re.findall(r"done in ([\d.]+) s", text(log))
    if not rates:
        return None, "no steps/s line in the log"
    steps_s = float(rates[-1])
    c = config(run)
    batch, block = c["train_config"]["batch_size"], c["model_config"]["block_size"]
    train = [line for line in (Path(run) / "train.txt").read_text().splitlines() if line]
    scored = sum(len(line) + 1 for line in train) / len(train)  # targets a row scores
    return steps_s, (f"{steps_s:,.1f} steps/s = {steps_s * batch * block:,.0f} tok/s "
                     f"({batch}x{block} positions), {steps_s * batch * scored:,.0f} scored tok/s"
                     + (f"; done in {done[-1]} s" if done else ""))


def worst(a, b):
    a, b = metrics(a), metrics(b)
    if [r.keys() for r in a] != [r.keys() for r in b]:
        return None
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x
               if k != "step" and x[k] is not None)


def main():
    if mode in ("speed", "fp16"):
        run, log = args
        rate, line = speed(run, log)
        v = vals(run)
        ok = rate is not None and len(v) >= 2 and v[-1][1] < v[0][1] - 0.3
        line += f"; val {v[0][1]:.4f} -> {v[-1][1]:.4f}" if v else "; no evaluation"
        if mode == "fp16":
            scale = json.loads((Path(run) / "manifest.json").read_text())["state"] \
                .get("grad_scaler", {}).get("scale")
            ok = ok and scale is not None and 0 < scale < float("inf")
            line += f"; loss scale {scale:g}" if scale is not None else "; no loss scale saved"
        return ok, line
    if mode == "moved":
        run, first_steps, log = args
        v, n = vals(run), int(first_steps)
        gpu = [loss for step, loss in v if step == n - 1]  # the GPU run's last evaluation
        cpu = [loss for step, loss in v if step == n]      # the CPU's first, one update later
        final = metrics(run)[-1]
        device = config(run)["train_config"]["device"]
        warned = re.search(r"tinylm: warning: this run computed on (\S+); on cpu", text(log))
        ok = (bool(warned) and device == "cpu" and "test_loss" in final
              and final["step"] > int(first_steps))
        nan = float("nan")
        line = (f"val {gpu[0] if gpu else nan:.4f} (step {n - 1}, GPU), "
                f"{cpu[0] if cpu else nan:.4f} (step {n}, resumed on cpu"
                + (f"; {abs(gpu[0] - cpu[0]):.2g} apart" if gpu and cpu else "")
                + f") -> {v[-1][1]:.4f} "
                f"(step {v[-1][0]}); test {final.get('test_loss', nan):.4f}; "
                f"config device now {device}; "
                + (f"warned: computed on {warned.group(1)}" if warned else "NO device-change warning"))
        return ok, line
    if mode == "same":
        a, b, what = args
        d = worst(a, b)
        if d is None:
            return False, f"{what}: the metrics records differ in number or keys"
        return d < 1e-5, f"{what}: worst metrics difference {d:.3g} (limit 1e-5)"
    if mode == "nccl":
        report_file, a, b = args
        report = json.loads(text(report_file).strip().splitlines()[-1])
        d = worst(a, b)
        on_gpu = report["all_reduces"].get("cuda", 0)
        ok = "cuda:nccl" in report["backend"] and on_gpu > 0 and d is not None and d < 1e-5
        return ok, (f"group {report['backend']}; {on_gpu} all-reduces of cuda tensors, "
                    f"{report['all_reduces'].get('cpu', 0)} of cpu ones; worst difference "
                    f"from one process {d if d is None else format(d, '.3g')}")
    raise SystemExit(f"unknown mode {mode}")


try:
    ok, line = main()
except Exception as e:  # a missing file: the run did not get that far
    ok, line = False, f"no figure ({type(e).__name__}: {str(e)[:160]})"
print(("ok" if ok else "FAILED") + "\t" + line)
EOF
}

# figure_or CHECK-ID NAME RC MODE ARGS...: record the check from its exit status and figure.
judge() {
    local id=$1 name=$2 rc=$3
    shift 3
    if [ "$rc" = 99 ]; then
        record "$id" "$name" skipped "dry run"
        return
    fi
    local out status fig
    out=$(figure "$@")
    status=${out%%$'\t'*}
    fig=${out#*$'\t'}
    if [ "$rc" != 0 ]; then
        status=FAILED
        fig="exit $rc ($( [ "$rc" = 124 ] && echo "out of time" || echo "see the log")); $fig"
    fi
    record "$id" "$name" "$status" "$fig"
}

echo "gpu_check: writing under $DIR"
[ "$DRY" = 1 ] && echo "gpu_check: dry run ($WHY_DRY): the commands are printed, not run"

# --- preflight: what the checks need is where they look for it (dry runs too) -------------
echo "preflight"
PRE=$("$PY" - 2>&1 <<'EOF'
import subprocess, sys
from pathlib import Path
import tinylm
from tinylm.recipes import RECIPES
assert Path("tests/test_cuda.py").is_file(), "tests/test_cuda.py is missing"
assert "transformer-makemore" in RECIPES, "no transformer-makemore recipe"
out = subprocess.run([sys.executable, "-m", "pytest", "-q", "--co", "-m", "cuda",
                      "-p", "no:cacheprovider", "tests/test_cuda.py"],
                     capture_output=True, text=True).stdout.strip().splitlines()
print(f"tinylm from {Path(tinylm.__file__).parent}; recipe transformer-makemore; "
      f"{out[-1] if out else 'pytest collected nothing'}")
EOF
)
RC=$?
echo "  $(tail -n 3 <<<"$PRE")"
if [ "$RC" = 0 ] && grep -q "tests collected" <<<"$PRE"; then
    record 0 "preflight" ok "$PRE"
else
    record 0 "preflight" FAILED "$(tail -n 1 <<<"$PRE")"
fi

# --- a. versions ----------------------------------------------------------------------------
echo "a. versions"
VERSIONS=$DIR/versions.txt
if [ "$DRY" = 1 ]; then
    printf '  $ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader\n'
    printf '  $ %s -c "import torch; ... torch, CUDA, cuDNN, NCCL, TF32 ..."\n' "$PY"
    record a "versions" skipped "dry run"
else
    {
        if command -v nvidia-smi >/dev/null; then
            echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total \
                --format=csv,noheader 2>&1 | head -n 1)"
        else
            echo "nvidia-smi: not found"
        fi
        "$PY" - "$DEVICE" <<'EOF'
import platform, sys
import torch
print(f"python {platform.python_version()}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None
    print(f"GPU {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{torch.cuda.device_count()} device(s); NCCL {nccl}")
print(f"TF32: matmul.allow_tf32 {torch.backends.cuda.matmul.allow_tf32}, float32 matmul "
      f"precision {torch.get_float32_matmul_precision()}, cudnn.allow_tf32 "
      f"{torch.backends.cudnn.allow_tf32}")
EOF
    } >"$VERSIONS" 2>&1
    sed 's/^/  /' "$VERSIONS"
    GPU_LINE=$(grep -m1 '^GPU ' "$VERSIONS" | cut -d, -f1 | sed 's/^GPU //')
    DRIVER=$(grep -m1 '^nvidia-smi:' "$VERSIONS" | grep -v 'not found' | cut -d, -f2 | tr -d ' ')
    TORCH_LINE=$(grep -m1 '^python ' "$VERSIONS" | sed 's/^python [^;]*; //')
    if grep -q '^python ' "$VERSIONS"; then
        record a "versions" ok "${GPU_LINE:-no GPU}, driver ${DRIVER:-?}; $TORCH_LINE"
    else
        record a "versions" FAILED "torch did not import (see $VERSIONS)"
    fi
fi

# --- b. the cuda tests ----------------------------------------------------------------------
echo "b. the cuda tests"
LOG=$DIR/pytest.log
run "$LOG" 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
RC=$?
if [ "$RC" = 99 ]; then
    record b "pytest -m cuda" skipped "dry run"
else
    LAST=$(grep -E '(passed|failed|skipped|error|no tests ran)' "$LOG" | tail -n 1 | sed 's/^=* *//; s/ *=*$//')
    FAILS=$(grep -E '^(FAILED|ERROR) ' "$LOG" | sed -E 's/^(FAILED|ERROR) tests\/test_cuda.py:://; s/ - .*//' \
        | paste -sd ' ' -)
    if [ "$RC" = 0 ] && ! grep -q 'skipped' <<<"$LAST"; then
        record b "pytest -m cuda" ok "$LAST"
    elif [ "$RC" = 0 ]; then
        record b "pytest -m cuda" skipped "$LAST (no CUDA GPU)"
    else
        record b "pytest -m cuda" FAILED "${LAST:-exit $RC}${FAILS:+; failed: $FAILS}"
    fi
fi

# --- c. bfloat16 throughput (and float32's) -------------------------------------------------
echo "c. transformer-makemore on $DEVICE, bfloat16 and float32, $BF16_STEPS steps"
for dtype in bfloat16 float32; do
    RUN=$DIR/runs/$dtype
    run "$DIR/$dtype.log" 60 "$PY" -m tinylm train "${RECIPE[@]}" --device "$DEVICE" \
        --dtype "$dtype" --steps "$BF16_STEPS" --eval-every "$BF16_STEPS" -o "$RUN"
    judge c "$dtype tok/s" $? speed "$RUN" "$DIR/$dtype.log"
done

# --- d. float16 with its GradScaler ---------------------------------------------------------
echo "d. float16 with its loss scale, $FP16_STEPS steps"
RUN=$DIR/runs/float16
run "$DIR/float16.log" 60 "$PY" -m tinylm train "${RECIPE[@]}" --device "$DEVICE" \
    --dtype float16 --steps "$FP16_STEPS" --eval-every "$FP16_STEPS" -o "$RUN"
judge d "float16 + GradScaler" $? fp16 "$RUN" "$DIR/float16.log"

# --- e. a GPU checkpoint resumed on the CPU -------------------------------------------------
echo "e. $MOVE_STEPS steps on $DEVICE, then 100 more resumed on the CPU"
RUN=$DIR/runs/moved
run "$DIR/moved-gpu.log" 45 "$PY" -m tinylm train "${RECIPE[@]}" --device "$DEVICE" \
    --steps "$MOVE_STEPS" --eval-every 100 -o "$RUN"
RC=$?
if [ "$RC" = 0 ] || [ "$RC" = 99 ]; then
    run "$DIR/moved-cpu.log" 90 "$PY" -m tinylm train -o "$RUN" --resume --device cpu \
        --steps $((MOVE_STEPS + 100)) -n 0
    RC=$?
fi
judge e "GPU checkpoint on CPU" "$RC" moved "$RUN" "$MOVE_STEPS" "$DIR/moved-cpu.log"

# --- f. torchrun with one process, and NCCL -------------------------------------------------
echo "f. torchrun --nproc_per_node 1, and NCCL's all-reduce, $DDP_STEPS steps"
ALONE=$DIR/runs/alone
DDP=(train "${RECIPE[@]}" --device "$DEVICE" --steps "$DDP_STEPS" --eval-every 100)
run "$DIR/alone.log" 45 "$PY" -m tinylm "${DDP[@]}" -o "$ALONE"
RC_ALONE=$?
run "$DIR/torchrun.log" 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m tinylm "${DDP[@]}" -o "$DIR/runs/torchrun"
RC=$?
[ "$RC" = 0 ] && [ "$RC_ALONE" != 0 ] && RC=$RC_ALONE
judge f "torchrun 1 process" "$RC" same "$DIR/runs/torchrun" "$ALONE" \
    "WORLD_SIZE 1: no process group, the single-process path"
run "$DIR/nccl.log" 60 "$PY" -c 'import json, sys; sys.path.insert(0, "tests"); import test_cuda
steps = int(sys.argv[3])
settings = dict(recipe="transformer-makemore", backend="torch-module", steps=steps, eval_every=100)
print(json.dumps(test_cuda.nccl_run(sys.argv[1], settings, sys.argv[2])))' \
    "$DIR/runs/nccl" "$DEVICE" "$DDP_STEPS"
RC=$?
[ "$RC" = 0 ] && [ "$RC_ALONE" != 0 ] && RC=$RC_ALONE
judge f "NCCL all-reduce" "$RC" nccl "$DIR/nccl.log" "$DIR/runs/nccl" "$ALONE"

# --- the summary ----------------------------------------------------------------------------
{
    echo
    echo "==== gpu_check summary: $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - START)) s ===="
    for i in "${!CHECKS[@]}"; do
        printf '%s %-8s %s\n' "${CHECKS[$i]}" "${STATUS[$i]}" "${FIGURES[$i]}"
    done
    if [ "$DRY" = 1 ]; then
        echo "==== dry run ($WHY_DRY): nothing was run ===="
    elif [ "$FAILED" = 0 ]; then
        echo "==== all ok ===="
    else
        echo "==== $FAILED FAILED ===="
    fi
    echo "logs and runs: $DIR"
} | tee "$SUMMARY_FILE"
[ "$FAILED" = 0 ]
