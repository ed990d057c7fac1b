#!/usr/bin/env bash
# Everything only a GPU can show, in one run: the CUDA tests, the evaluator and re-ranking timings
# (Market, MSMT17, 10,000 x 1,000,000 fp16), LFM's share of a bf16/channels_last training step, the training
# throughput of both data backends (bf16 + channels_last, compile off/on, batch 64 and 256), and a short real
# training run on the synthetic domains (tensor backend, bf16, evaluation on the GPU, report.html).
# At most 10 minutes: each stage has its own time limit (they add up to 600 s), so one hang cannot eat the
# rest.
#
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl yacs==0.1.8   # once; .whl/ is ignored
#   bash tools/gpu_checks.sh            # on the GPU machine, with .whl carried along
#
# Logs go to $OUT (the device tool's result folder) or ./gpu_checks/; the figures they print are what
# BENCHMARKS.md's GPU rows are filled from. Runs from a checkout without installing the package.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_checks}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

if ! $PY -c "import yacs" 2>/dev/null; then
    ls .whl/yacs-*.whl >/dev/null 2>&1 || { echo "yacs is missing and no .whl/yacs-*.whl was carried"; exit 2; }
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/yacs-*.whl || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

status=0
stage() {  # stage NAME SECONDS COMMAND...: run one stage, log it, remember a failure, carry on
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda,
          'torchvision', torchvision.__version__, 'timm', timm.__version__)"; } 2>&1 | tee "$OUT/machine.log"

export XDG_CACHE_HOME="$OUT/cache"  # the decoded-image cache stays with this run
stage cuda_tests 120 $PY -m pytest -q -m cuda -p no:cacheprovider -o addopts="-ra"
stage train_tensor 120 bash -c "$PY tools/make_synthetic.py --style both --root '$OUT/data' --train-ids 100 \
    --test-ids 60 && $PY tools/train.py --config lfm_synthetic.yml --overwrite DATASETS.ROOT '$OUT/data' \
    OUTPUT_DIR '$OUT/train_tensor' DEVICE cuda DATALOADER.BACKEND tensor SOLVER.MAX_EPOCHS 4 \
    SOLVER.WARMUP_EPOCHS 1 SOLVER.STEPS '(3,)' TEST.EVAL_PERIOD 2"
stage benchmark_train 180 $PY tools/benchmark_train.py --device cuda --rounds 1
stage benchmark_eval 120 $PY tools/benchmark_eval.py --device cuda --sizes tiny,market,msmt,large --rerank
stage benchmark_lfm 60 $PY tools/benchmark_lfm.py --device cuda
exit $status
