#!/usr/bin/env bash
# Everything the GPU machine is asked to do in one lease (docs/benchmarks.md records the output).
# Once here: bash scripts/gpu_wheels.sh (pydantic's wheels into .whl/, which the image lacks); then
# the device call: run(command="bash scripts/gpu_session.sh", carry=[".whl"], timeout_s=600) ($OUT is set there)
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -c "import pydantic" 2>/dev/null || { echo "pydantic missing: run scripts/gpu_wheels.sh here and carry .whl" | tee -a "$OUT/log.txt"; exit 3; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u;
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } \
  2>&1 | tee -a "$OUT/log.txt"
BUDGET=${BUDGET:-580}  # seconds for the whole script; later (less important) steps get what is left
b() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS)); (( left < limit )) && limit=$left
  (( limit < 15 )) && { echo "== $name skipped (out of time)"; return; }
  echo "== $name (limit ${limit}s)"
  timeout "$limit" python3 cli.py speed "$@" --out "$OUT/$name.json" > /tmp/$name.log 2>&1
  echo "rc=$?"; grep -v "Warning\|warnings.warn" /tmp/$name.log | tee -a "$OUT/log.txt" | tail -12
}
# priorities of the next lease (issues 15 and 16); earlier sessions' lines are in git history
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_rollout_gpu.py -s 2>&1 | tail -15 | tee -a "$OUT/log.txt"
# issue 15: the evaluation workload, 48 problems x 12 samples through 128 slots: continuous vs static,
# and continuous with every step lever (fuse, flex attention (compiled), sort-free top-p)
b workload_1.7b 240 workload --shape qwen3-1.7b --problems 32 --samples 12 --slots 128 --modes fast,static,fast+fuse+flex+search
# issue 15 item 4: the levers one at a time against plain fast at batch 128, the evaluation's sampling
# (no top-k); search reads the probabilities 30 times, so it is only measured compiled (with flex)
b levers_1.7b 260 rollout --shape qwen3-1.7b --batch 128 --new-tokens 512 --top-k 0 --temperature 1.0 --engines fast,fast+fuse,fast+fuse+flex,fast+fuse+flex+search
# hf on 120 sequences (one batch of 120 rows: hf at its best batch), extrapolated per useful token
b workload_hf_1.7b 150 workload --shape qwen3-1.7b --problems 10 --samples 12 --slots 128 --modes hf --hf-problems 10
# issue 15: fixed length with the evaluation's sampling (no top-k)
b rollout_eval_1.7b 90 rollout --shape qwen3-1.7b --batch 32,128,256 --new-tokens 1024 --hf-new-tokens 16 --top-k 0 --temperature 1.0
# issue 16: one GRPO step at the paper's settings (8 x 2,048), default memory setting vs before
b step_grpo_1.7b 80 step --method grpo --shape qwen3-1.7b --completion 2048 --student-prompt 256 --prompts 1 --generations 8 --micro-batch 8,4 --checkpointing on,off --reps 1
echo done
