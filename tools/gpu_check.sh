#!/usr/bin/env bash
# The checks that need a CUDA device, in one run: `bash tools/gpu_check.sh [OUT_DIR]` from the repository root on a
# machine with an NVIDIA GPU and the project's packages (CI never has one; docs/scale.md reports what it printed).
# 1. the gpu-marked tests (tests/gpu): a bf16 fit on the GPU trains its budget and scores; GPU translation = CPU's;
# 2. MedShift's U-Net per training iteration at 64-512 px, fp32 and bf16, on the GPU and on this machine's CPU;
# 3. each learned method's training iteration on `tiny` as configured, fp32 vs bf16, on the GPU.
set -u
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XRAYBENCH_DATA=${XRAYBENCH_DATA:-/tmp/xraybench-data}
PY=${PY:-python3}
if [ -d .whl ]; then  # packages the machine lacks (diffusers), carried as wheels: installed beside, not into, it
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__,
torch.cuda.get_device_name(0), torch.get_num_threads(), 'CPU threads')"
  $PY -m pytest -q -p no:cacheprovider -m gpu tests/gpu
  $PY -m benchmark perf --train --accelerator gpu --unet-sizes 64 128 256 512 --iterations 10
  $PY -m benchmark perf --train --accelerator cpu --unet-sizes 64 128 --iterations 3
  $PY -m benchmark perf --train --accelerator gpu --preset tiny --methods medshift cyclegan sdedit --iterations 10 \
    --repeats 2
} 2>&1 | tee "$OUT/gpu_check.log"
