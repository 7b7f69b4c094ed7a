#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU: one call, about 5 minutes, offline. Not part
# of CI (CI has no GPU). Exits non-zero on the first failure; prints every figure it checks.
# fp16 is forced on any GPU by a monkeypatch in this script only (common.choose_precision).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}/gpu_check"
rm -rf "$out" && mkdir -p "$out"
export OUT_DIR="$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA GPU: run tests/gpu_check.sh on a machine with one"; exit 1; }
quick=(--data synthetic --no-download --limit 4000 --epochs 6)

echo "== device, precision rule, refusals"
python - <<'PY'
import torch, torchvision, common
d = common.get_device("auto")
assert d.type == "cuda", d
cap, name = torch.cuda.get_device_capability(d), torch.cuda.get_device_name(d)
print("torch", torch.__version__, "torchvision", torchvision.__version__, "|", name, cap,
      "| torch says bf16", torch.cuda.is_bf16_supported(), "| we use", common.choose_precision(d))
want = "bf16" if cap[0] >= 8 else "fp16" if cap[0] == 7 else "fp32"
assert common.choose_precision(d) in (want, "fp32"), (cap, common.choose_precision(d))
assert common.channels_last_helps(d, "bf16") and not common.channels_last_helps(d, "fp32")
PY
set +e
python 03_cnn_train.py --device "cuda:$(python -c 'import torch; print(torch.cuda.device_count())')" \
  "${quick[@]}" --out-dir "$out/refused" 2> "$out/refused.txt"
code=$?
set -e
echo "cuda:N beyond the count: exit $code, $(cat "$out/refused.txt")"
[ "$code" -eq 2 ]

echo "== bf16 (where native), fp32 and forced fp16 runs that learn; clip and GradScaler under fp16"
python - "${quick[@]}" <<'PY'
import importlib, json, os, sys, time
import torch
import common
cnn = importlib.import_module("03_cnn_train")
out, argv = os.environ["OUT_DIR"], sys.argv[1:]
norms, skips, Real = [], [], torch.amp.GradScaler

class Counting(Real):  # a skipped step lowers the scale in update()
    def update(self, *a, **k):
        before = self.get_scale() if self.is_enabled() else None
        super().update(*a, **k)
        if before is not None:
            skips[-1] += self.get_scale() < before

def scaler(*a, **k):
    skips.append(0)
    return Counting(*a, **k)

real_clip = common.nn.utils.clip_grad_norm_
common.nn.utils.clip_grad_norm_ = lambda p, m, *a, **k: norms.append(float(real_clip(p, m, *a, **k)))
torch.amp.GradScaler = scaler
native = common.choose_precision("cuda")
for label, extra, force in (("native " + native, [], None), ("fp32", ["--no-amp"], None),
                            ("fp16 forced", [], "fp16")):
    common.choose_precision = (lambda *a, **k: force) if force else common.choose_precision
    norms.clear(), skips.clear()
    start = time.perf_counter()
    assert cnn.main(argv + extra + ["--device", "cuda", "--out-dir", f"{out}/{label[:4]}"]) == 0
    r = json.load(open(f"{out}/{label[:4]}/synthetic/cnn/result.json"))
    print(f"{label}: precision {r['precision']}, val {r['result']['val_accs']}, s/epoch "
          f"{r['result']['epoch_seconds']}, wall {time.perf_counter() - start:.1f} s")
    assert r["result"]["val_acc"] >= 90, r["result"]["val_acc"]
    if force:
        assert r["precision"] == "fp16"
        finite = [n for n in norms if n == n and n != float("inf")]
        print(f"  clip hook: {len(norms)} calls, gradient norm median "
              f"{sorted(finite)[len(finite) // 2]:.3g}, max {max(finite):.3g} (scaled would be ~65536x)")
        print(f"  GradScaler skipped steps per epoch: {skips}")
        assert max(finite) < 1e3 and max(skips) <= 3, (max(finite), skips)
PY

echo "== --deterministic repeats bit for bit"
for i in 1 2; do
  python 03_cnn_train.py --device cuda --deterministic "${quick[@]}" --epochs 2 --out-dir "$out/det$i" > /dev/null
done
python - "$out" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/det{i}/synthetic/cnn/result.json"))["result"] for i in (1, 2))
print("train losses", a["train_losses"], "and", b["train_losses"])
assert a["train_losses"] == b["train_losses"] and a["val_accs"] == b["val_accs"]
PY
python 04_case_studies.py --device cuda --deterministic --train googlenet --aux "${quick[@]}" \
  --limit 1024 --epochs 1 --out-dir "$out/aux" > /dev/null

echo "== the benchmark ratio (target <= 0.2x on a GPU) and 04's table timed on cuda"
python tests/benchmark.py --device cuda --data synthetic
start=$(date +%s)
python 04_case_studies.py --device cuda --out-dir "$out" | grep -E "^[a-z]|images/s" | head -20
echo "04's table: $(( $(date +%s) - start )) s on cuda"
echo "gpu_check: all checks passed"
