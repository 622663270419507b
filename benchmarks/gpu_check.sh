#!/usr/bin/env bash
# The CUDA paths in one short run on a GPU machine (CI has none): the gpu-marked tests, training with AMP in bf16
# and fp16 through the CLI, the teacher cache on CUDA, `edgekd bench` with CUDA events (FP32, bf16 with CUDA
# graphs), AMP vs FP32 distillation throughput, DDP with nccl when there are 2+ GPUs, and, with the time left
# before DEADLINE_S, the unlabelled-KD benchmark (issue 14) on CUDA. Every step has its own time limit and the
# script goes on after a failure; GPU_OUT gets gpu_check.log and each step's JSON.
#
#   GPU_OUT=runs/gpu bash benchmarks/gpu_check.sh
#
# On a machine without edgekd's dependencies installed, put their wheels in .whl first
# (../shared/tools/gpu-wheels.sh) and install them to a target directory, as in the README's "GPU check".
set -u
OUTD=${GPU_OUT:-runs/gpu}
WORK=${GPU_WORK:-/tmp/edgekd-gpu}
DEADLINE_S=${DEADLINE_S:-420}
mkdir -p "$OUTD" "$WORK"
LOG="$OUTD/gpu_check.log"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

step() {  # step NAME SECONDS CMD...: run with a limit, keep going; the summary line says rc and seconds
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  local left=$((DEADLINE_S - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "SKIP $name: past the deadline" | tee -a "$LOG"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $(date +%T) $name (limit ${limit}s): $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "STEP $name rc=$rc $((SECONDS - start))s" | tee -a "$LOG"
}

{
  nvidia-smi -L
  $PY -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0), 'gpus', torch.cuda.device_count(), 'ort', o.__version__, o.get_available_providers())"
} >>"$LOG" 2>&1

step pytest_gpu 180 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_bench.py tests/test_gpu.py
step train_bf16 90 $PY -m edgekd train --model small:resnet32x4 --data pneumoniamnist --epochs 3 --batch-size 256 \
  --device cuda --amp --amp-dtype bf16 -q --out "$WORK/teacher" --json "$OUTD/train_bf16.json"
step distill_fp16 90 $PY -m edgekd distill --student small:resnet8 --teacher "$WORK/teacher" --data pneumoniamnist \
  --epochs 3 --batch-size 256 --device cuda --amp --amp-dtype fp16 --cache-teacher -q --out "$WORK/student" \
  --json "$OUTD/distill_fp16.json"
step bench_cuda 90 $PY -m edgekd bench "$WORK/teacher" "$WORK/student" --backend torch --device cuda,cpu \
  --batch 1,32,256 --min-s 1 --json "$OUTD/bench_cuda.json"
step bench_cuda_graphs_bf16 60 $PY -m edgekd bench "$WORK/teacher" "$WORK/student" --backend torch --device cuda \
  --precision bf16 --cuda-graphs --batch 1,256 --min-s 1 --no-roofline --json "$OUTD/bench_cuda_graphs.json"
step amp_throughput 100 $PY benchmarks/distill_throughput.py --device cuda --parts amp --amp-dtype bf16 \
  --teacher small:resnet32x4 --student small:resnet8x4 --batch-size 512 --steps 9 --repeats 2 --no-progress \
  --out "$OUTD/amp_throughput.json"
step amp_throughput_224 150 $PY benchmarks/distill_throughput.py --device cuda --parts amp --amp-dtype bf16 \
  --amp-data synthetic:classes=2,n=1536,size=224,channels=3 --teacher tv:resnet50 --student tv:mobilenet_v3_large \
  --batch-size 128 --steps 12 --repeats 2 --no-progress --out "$OUTD/amp_throughput_224.json"
if [ "$($PY -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  step ddp_nccl 90 $PY benchmarks/ddp_equivalence.py --device cuda --nproc 2 --json "$OUTD/ddp_nccl.json"
else
  echo "SKIP ddp_nccl: one GPU (nccl needs one GPU per process; tests/test_gpu.py checks the clear refusal)" \
    | tee -a "$LOG"
fi
step unlabeled_kd 600 $PY benchmarks/unlabeled_kd.py --out "$WORK/unlabeled_kd" --json "$OUTD/unlabeled_kd.json"
grep -E "^(STEP|SKIP)" "$LOG"
