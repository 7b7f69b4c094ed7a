#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU: one call, a few minutes. Not part of CI
# (CI has no GPU). Works offline; writes its runs under $OUT (or /tmp) and prints every
# figure README needs: versions, GPU, precision chosen, benchmark ratio, s/epoch, table.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}/gpu_check"
python -m pip install -q -r requirements.txt 2>/dev/null || echo "pip install skipped (no network?); using what is installed"
python - <<'PY'
import torch, torchvision, numpy, common
d = torch.device("cuda")
print("torch", torch.__version__, "| torchvision", torchvision.__version__, "| numpy", numpy.__version__)
print("gpu", torch.cuda.get_device_name(d), "| capability", torch.cuda.get_device_capability(d),
      "| torch says bf16", torch.cuda.is_bf16_supported(), "| we use", common.choose_precision(d),
      "| TF32 convs", torch.backends.cudnn.allow_tf32, "matmuls", torch.backends.cuda.matmul.allow_tf32)
PY
python tests/benchmark.py --device cuda --data synthetic                                      # ratio target <= 0.2x
python 03_cnn_train.py --device cuda --data synthetic --epochs 2 --out-dir "$out"             # mixed precision + channels_last training
python 03_cnn_train.py --device cuda --data synthetic --epochs 2 --out-dir "$out" --no-amp    # fp32 (TF32 where on)
python 03_cnn_train.py --device cuda --data synthetic --epochs 2 --out-dir "$out" --deterministic
python 04_case_studies.py --device cuda --out-dir "$out"                                      # table on the GPU
python 04_case_studies.py --device cuda --train googlenet --aux --data synthetic --epochs 1 --limit 2048 --out-dir "$out"
python - "$out" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("synthetic/cnn*/result.json")):
    r = json.loads(p.read_text())
    print(p.parent.name, r["precision"], "val", r["result"]["val_accs"], "s/epoch", r["result"]["epoch_seconds"])
PY
