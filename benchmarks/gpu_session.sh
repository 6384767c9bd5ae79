#!/usr/bin/env bash
# One short session on a CUDA machine (no network needed; uses the machine's own torch): the
# training throughput table, the fast recipe end to end on generated data of CIFAR-10's size,
# torchrun with the nccl backend, then the test suite with a GPU present (--device auto picks
# CUDA there). Meant to fit a ~10-minute lease; run from the repository root:
#
#     OUT=/tmp/gpu bash benchmarks/gpu_session.sh
set -u -o pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CNNZOO_OFFLINE=1 CNNZOO_CACHE=/tmp/cnnzoo-cache
OUT=${OUT:-/tmp/cnnzoo-gpu}
mkdir -p "$OUT"
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
"$py" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

echo "== throughput, bf16 (ref = the notebook's fp32 NCHW recipe)"
"$py" benchmarks/throughput.py --data synthetic:20000 --device cuda --precision bf16 \
    --batch-size 256 --steps 40 --warmup 5 \
    --models resnet18 plain18 resnet56 vgg16 googlenet fastnet 2>&1 | tee "$OUT/throughput.txt"
echo "== throughput, fp32 (PyTorch defaults: cuDNN convolutions may use TF32)"
"$py" benchmarks/throughput.py --data synthetic:20000 --device cuda --precision fp32 \
    --batch-size 256 --steps 40 --warmup 5 --models resnet18 resnet56 2>&1 | tee -a "$OUT/throughput.txt"

echo "== fast recipe, 50 000 generated images, 10 epochs"
/usr/bin/time -f "wall %e s" "$py" -m cnnzoo train fastnet --recipe fast --data synthetic:50000 \
    --device cuda --out /tmp/fast --quiet 2>&1 | tee "$OUT/fast.txt"
epochs() {  # seconds and img/s per epoch, then the test accuracy (meaningless on generated data)
    "$py" -c 'import json, sys; d = sys.argv[1]
for line in open(d + "/metrics.jsonl"):
    r = json.loads(line); print(r["epoch"], round(r["seconds"], 2), "s", round(r["img_per_s"]), "img/s")
print("test acc", json.load(open(d + "/summary.json"))["test_acc_last"])' "$1" 2>&1 | tee -a "$OUT/fast.txt"
}
epochs /tmp/fast
echo "== fast recipe, --compile"
/usr/bin/time -f "wall %e s" "$py" -m cnnzoo train fastnet --recipe fast --data synthetic:50000 \
    --device cuda --compile --out /tmp/fastc --quiet 2>&1 | tee -a "$OUT/fast.txt"
epochs /tmp/fastc

echo "== torchrun, nccl, 1 process"
timeout 120 torchrun --standalone --nproc_per_node=1 -m cnnzoo train resnet20 --data synthetic \
    --epochs 2 --device cuda --out /tmp/ddp --quiet 2>&1 | tail -n 5
echo "torchrun rc=$?"

echo "== tests with a GPU present"
xdist=$("$py" -c 'import xdist' 2>/dev/null && echo "-n 8")  # pytest-xdist, if installed there
timeout 240 "$py" -m pytest -q -p no:cacheprovider -rfE --tb=line $xdist tests 2>&1 \
    | tee "$OUT/pytest.txt" | tail -n 30
