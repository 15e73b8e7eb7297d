#!/usr/bin/env bash
# GPU checks of the sharded strategies (a few minutes on one GPU; CI has none and skips with one line):
# for trainer=fsdp (bf16) and trainer=deepspeed_zero3, a `debug=fast` run with the real SmolLM2-135M
#   <strategy>: train        an uninterrupted run ends with its export (peft adapter + lamm_weights)
#   <strategy>: kill+resume  a second run is SIGKILLed right after its first checkpoint; `resume=auto`
#                            finishes it, and its export matches the uninterrupted run's
#   <strategy>: reload       the finished run loads back for evaluation (lamm-eval's loader)
# One line per check (PASS/FAIL name); exit status 1 if any failed. Logs stay in $GPU_CHECK_DIR.
#   bash scripts/gpu_check.sh                       GPU_CHECK_DEVICES=2 for two GPUs
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then  # no driver tool: no GPU, and no need to start Python to know
    gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
fi
if [ "${gpus:-0}" -lt 1 ]; then
    echo "gpu_check: skipped: no CUDA GPU on this machine"
    exit 0
fi

DEVICES=${GPU_CHECK_DEVICES:-1}
OUT=${GPU_CHECK_DIR:-$(mktemp -d -t lamm-gpu-check.XXXXXX)}
mkdir -p "$OUT"
STEPS=40           # long enough that the kill lands mid-run, short enough for the time budget
EVERY=5
LIMIT=${GPU_CHECK_RUN_SECONDS:-180}  # one run; a hung collective fails its check instead of the time budget
failed=0

check() {  # check NAME COMMAND...: one PASS/FAIL line; a failure names its log
    local name=$1; shift
    local log="$OUT/$(echo "$name" | tr ' :+/' '____').log"
    if "$@" >"$log" 2>&1; then
        echo "PASS $name"
    else
        echo "FAIL $name (log: $log)"
        failed=1
    fi
}

common=(debug=fast model/llm=smollm2_135m "trainer.devices=$DEVICES" "trainer.max_steps=$STEPS"
        "checkpoint.every_n_steps=$EVERY" "paths.runs_dir=$OUT/runs" "paths.data_dir=$OUT/data")
train() {  # train STRATEGY RUN_NAME [overrides...]
    local strategy=$1 name=$2; shift 2
    timeout "$LIMIT" "$BIN/lamm-train" "${common[@]}" "trainer=$strategy" "run_name=$name" "$@"
}

run_of() { dirname "$(dirname "$(ls -d "$OUT/runs/$1"/*/checkpoints/last.ckpt | head -1)")"; }

uninterrupted() {  # uninterrupted STRATEGY
    train "$1" "$1-full" && test -f "$(run_of "$1-full")/export/lamm_weights.safetensors"
}

kill_and_resume() {  # kill_and_resume STRATEGY: SIGKILL after the first checkpoint, then resume=auto
    local strategy=$1 name="$1-resume"
    setsid timeout "$LIMIT" "$BIN/lamm-train" "${common[@]}" "trainer=$strategy" "run_name=$name" &  # own process group
    local pid=$! waited=0
    until ls -d "$OUT/runs/$name"/*/checkpoints/last.ckpt >/dev/null 2>&1; do
        sleep 0.2; waited=$((waited + 1))
        if ! kill -0 "$pid" 2>/dev/null || [ "$waited" -gt 1500 ]; then
            echo "no checkpoint appeared before the run ended"; kill -9 -- -"$pid" 2>/dev/null; return 1
        fi
    done
    kill -9 -- -"$pid"; wait "$pid" 2>/dev/null
    local killed; killed=$(run_of "$name")
    if [ -f "$killed/export/lamm_weights.safetensors" ]; then echo "the run finished before the kill"; return 1; fi
    train "$strategy" "$name" resume=auto || return 1
    local resumed; resumed=$(ls -d "$OUT/runs/$name"/*/ | tail -1)  # resume=auto trains into a new folder
    [ "${resumed%/}" != "$killed" ] || { echo "resume=auto did not start a new run folder"; return 1; }
    "$PY" - "$(run_of "$strategy-full")/export" "$resumed/export" <<'EOF'
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

full, resumed = Path(sys.argv[1]), Path(sys.argv[2])
worst = 0.0
for rel in ("lamm_weights.safetensors", "adapter/adapter_model.safetensors"):
    a, b = load_file(str(full / rel)), load_file(str(resumed / rel))
    assert a.keys() == b.keys(), f"{rel}: different tensors"
    for k in a:
        worst = max(worst, (a[k].float() - b[k].float()).abs().max().item())
        # bf16 kernels on a GPU need not be bitwise deterministic: close, not identical
        torch.testing.assert_close(b[k].float(), a[k].float(), rtol=1e-2, atol=1e-3, msg=f"{rel} {k}")
print(f"resumed export matches the uninterrupted run (max |diff| {worst:.2e})")
EOF
}

reload() {  # reload STRATEGY: the finished run loads back through lamm-eval's loader
    "$PY" -c "import sys; from lamm.training.export import load_for_inference; load_for_inference(sys.argv[1])" \
        "$(run_of "$1-full")"
}

for strategy in fsdp deepspeed_zero3; do
    check "$strategy: train" uninterrupted "$strategy"
    check "$strategy: kill+resume" kill_and_resume "$strategy"
    check "$strategy: reload" reload "$strategy"
done
exit $failed
