#!/usr/bin/env bash
# The GPU check: the GPU-only tests and the real trainer's throughput on this machine, in one report.
#
#   bash bench/gpu_check.sh [OUT_DIR]     # OUT_DIR defaults to runs/gpu-check; report: OUT_DIR/gpu-check.md
#
# With CUDA (target: under 8 minutes on one or more NVIDIA GPUs):
#   1. pytest -m gpu (tests/test_losses.py's cuda cases: the penalty's float32 pass under bf16/fp16
#      autocast; tests/test_gpu.py: TF32, bitwise resume with deterministic kernels, ZeRO-2 on one GPU,
#      NCCL on two); counts and messages go into the report;
#   2. bench/bench_speed.py: fp32/bf16 x compile off/on x channels_last off/on at the 8gpu shape, then
#      the seed shape, each given what is left of the time budget (a variant that does not fit, or fails,
#      is marked in its table);
#   3. the report: GPUs, driver, torch/CUDA/cuDNN/accelerate/DeepSpeed versions, the tests, the tables.
# Without CUDA: the tests still run (each skips and says why); instead of the GPU benchmark, the CPU half:
# bench_speed.py --compare-defaults at the demo shape, one thread (about 2 minutes on 2 cores).
#
# GPU_CHECK_BUDGET_S (default 450) is the whole run's time target in seconds. Exit status: 0 when every
# test passed or skipped and every benchmark ran; 1 otherwise (the report is written either way).
set -euo pipefail

caller_dir=$(pwd)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out_arg=${1:-$repo/runs/gpu-check}
case $out_arg in
    /*) ;;
    *) out_arg=$caller_dir/$out_arg ;;  # relative to where the command was typed
esac
mkdir -p "$out_arg"
out_dir=$(cd "$out_arg" && pwd)
report=$out_dir/gpu-check.md
cd "$repo"

if [[ -x .venv/bin/python ]]; then
    py=$repo/.venv/bin/python
else
    py=$(command -v python)
fi
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
budget=${GPU_CHECK_BUDGET_S:-450}
status=0

cuda=$("$py" -c 'import torch; print(torch.cuda.is_available())')
if [[ $cuda != True ]]; then
    # The CPU half is timed with one thread per process, as the other CPU benchmarks are.
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
fi
echo "gpu_check: python $py; CUDA available: $cuda; output in $out_dir"

# --------------------------------------------------------------------------------------------------
# 1. The GPU tests

echo "gpu_check: pytest -m gpu ..."
tests_rc=0
rm -f "$out_dir/gpu-tests.xml"
timeout 300 "$py" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$out_dir/gpu-tests.xml" \
    >"$out_dir/gpu-tests.log" 2>&1 || tests_rc=$?
tail -n 20 "$out_dir/gpu-tests.log"
if [[ $tests_rc -ne 0 ]]; then
    status=1
fi

# A Markdown summary of the JUnit XML: counts, then one row per test.
tests_md=$("$py" - "$out_dir/gpu-tests.xml" "$tests_rc" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

path, rc = Path(sys.argv[1]), int(sys.argv[2])
if not path.is_file():
    why = "timed out after 300 s" if rc == 124 else f"exit status {rc}"
    print(f"**pytest wrote no results ({why})**; see gpu-tests.log.")
    sys.exit(0)
counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
rows = []
for case in ET.parse(path).getroot().iter("testcase"):
    result, message = "passed", ""
    for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        found = case.find(tag)
        if found is not None:
            result = name
            text = found.get("message") or found.text or ""
            message = next((line for line in text.splitlines() if line.strip()), "")[:200]
            break
    counts[result] += 1
    test = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
    rows.append(f"| `{test}` | {result} | {message.replace('|', '/')} |")
print(
    f"**{counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
    f"{counts['skipped']} skipped** (pytest exit status {rc})\n"
)
print("| test | result | message |\n|---|---|---|")
print("\n".join(rows))
PY
)

# --------------------------------------------------------------------------------------------------
# 2. Throughput

speed_files=()
run_bench() {  # run_bench NAME HARD_TIMEOUT_S ARGS...: one bench_speed.py run, its table in OUT_DIR
    local name=$1 hard=$2
    shift 2
    local rc=0 md=$out_dir/speed-$name.md
    rm -f "$md"
    echo "gpu_check: bench_speed.py $* (progress in speed-$name.log)"
    # At the hard limit SIGTERM: the bench finishes the block under way and writes what it has; SIGKILL
    # a minute later if it cannot.
    timeout -k 60 "$hard" "$py" bench/bench_speed.py "$@" --out "$md" \
        2> >(tee "$out_dir/speed-$name.log" >&2) >/dev/null || rc=$?
    if [[ $rc -ne 0 ]]; then
        status=1
        local why="exit status $rc"
        if [[ $rc -eq 124 || $rc -eq 137 ]]; then
            why="stopped at the hard limit of $hard s"
        fi
        if [[ -s $md ]]; then
            printf '\n**bench_speed.py %s**: the tables above hold what it measured.\n' "$why" >>"$md"
        else
            {
                echo "## $name: bench_speed.py did not finish ($why)"
                echo
                echo '```'
                tail -n 15 "$out_dir/speed-$name.log"
                echo '```'
            } >"$md"
        fi
    fi
    speed_files+=("$md")
}

grid=(--precision fp32 bf16 --compile off on --channels-last off on --steps 10 --warmup 3 --repeats 3)
if [[ $cuda == True ]]; then
    # The 8gpu shape gets a little over half of what is left (it is the one the GPUs are for), the seed
    # shape the rest; each run stops starting warm-ups and rounds at its budget. A compile already under
    # way runs on, so the hard limit leaves room for one.
    left=$((budget - SECONDS - 40))
    first=$((left * 55 / 100))
    if ((first < 60)); then
        first=60
    fi
    run_bench 8gpu $((first + 180)) --shape 8gpu "${grid[@]}" --budget-s "$first"
    second=$((budget - SECONDS - 20))
    if ((second < 60)); then
        second=60
    fi
    run_bench seed $((second + 180)) --shape seed "${grid[@]}" --budget-s "$second"
    gpu_line="GPU half: ran on $("$py" -c 'import torch; print(torch.cuda.get_device_name())')"
else
    gpu_line="GPU half skipped: no CUDA device"
    echo "gpu_check: $gpu_line (torch.cuda.is_available() is False); CPU half instead"
    run_bench cpu 240 --compare-defaults --shape demo --budget-s 150
fi

# --------------------------------------------------------------------------------------------------
# 3. The report

versions=$("$py" - <<'PY'
import importlib.metadata as metadata

import torch


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none"
print(
    f"- torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}, cuDNN {cudnn}; "
    f"accelerate {version('accelerate')}, DeepSpeed {version('deepspeed')}"
)
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"- GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
else:
    print("- GPU: none (torch.cuda.is_available() is False)")
PY
)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)

{
    echo "# GPU check"
    echo
    echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), commit $(git describe --always --dirty 2>/dev/null || echo unknown)"
    echo "$versions"
    if [[ -n $driver ]]; then
        echo "- NVIDIA driver $driver"
    fi
    echo "- $gpu_line; the whole check took ${SECONDS} s (target ${budget} s)"
    echo "- command: \`bash bench/gpu_check.sh $out_dir\`"
    echo
    echo "## Tests: \`pytest -m gpu\`"
    echo
    echo "$tests_md"
    echo
    echo "Full output: gpu-tests.log. Reproduce: \`$py -m pytest -m gpu -rs\`."
    echo
    echo "## Throughput: \`bench/bench_speed.py\`"
    echo
    for file in "${speed_files[@]}"; do
        sed 's/^#/##/' "$file"  # its headings one level down, under this one
        echo
    done
} >"$report"

echo
echo "gpu_check: $gpu_line"
echo "gpu_check: tests: $(echo "$tests_md" | head -n 1)"
echo "gpu_check: report written to $report"
exit "$status"
