#!/usr/bin/env bash
# The GPU checks, for a session that is lent a CUDA machine: one call, a few minutes.
# Not part of CI (CI has no GPU). Writes its runs under $OUT (or /tmp) and prints figures.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}/gpu_check"
python -m pip install -q -r requirements.txt
python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0), '| bf16', torch.cuda.is_bf16_supported())"
python 03_cnn_train.py --device cuda --data synthetic --benchmark                      # ratio target <= 0.2x
python 03_cnn_train.py --device cuda --data synthetic --epochs 2 --out-dir "$out"       # bf16 + channels_last training
python 04_case_studies.py --device cuda --out-dir "$out"                                # table on the GPU
python 04_case_studies.py --device cuda --train googlenet --aux --data synthetic --epochs 1 --limit 2048 --out-dir "$out"
