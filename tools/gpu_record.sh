#!/usr/bin/env bash
# The GPU records of results/ (results/README.md lists them), in one call on a GPU machine:
#     bash tools/gpu_record.sh DATA_DIR OUT_DIR > OUT_DIR/log.txt 2>&1
# DATA_DIR holds cifar-10-batches-py (the offline subset travels to a lent machine; the full set
# does not fit its 64 MiB transfer). Each step has its own time limit and a failed step does not
# stop the next. OUT_DIR receives six files, each well under 16 MiB: the four reports
# (bench_train_gpu.txt, bench_nonlocal_gpu.txt with its .log, bench_nlm_gpu.txt; each starts
# with its step's "==" lines) and cifar10_subset_gpu.tar.gz, the sweep's metrics.jsonl,
# summary.json and logs without weights or checkpoints. One whole call took 247 s on an H200
# (the sweep 101 s).
set -uo pipefail
export DATA=$1 OUT=$2 RUNS=$(mktemp -d) PYTHONUNBUFFERED=1 PYTHONPATH=$PWD; mkdir -p "$OUT"
step() {  # limit name command...
  local limit=$1 name=$2; shift 2; local t0=$SECONDS
  echo "== $name (limit ${limit}s)"; timeout "$limit" "$@"; echo "== $name: exit $? after $((SECONDS - t0)) s"
}
nvidia-smi -L; python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
sweep() {  # chapter 7's subset sweep (results/cifar10_subset/sweep.sh) on the GPU, seven runs at a time
  for seed in 0 1 2; do
    for attention in none se cbam bam gc nl danet; do
      python3 -m nltutorial.train --data cifar10 --data-dir "$DATA" --per-batch 1000 \
        --model resnet20 --attention "$attention" --epochs 10 --batch-size 128 --lr 0.1 \
        --schedule onecycle --label-smoothing 0.1 --device cuda --amp bf16 --channels-last \
        --seed "$seed" --out "$RUNS/cifar10_subset_gpu/$attention/seed$seed" --overwrite --no-progress \
        > "$RUNS/cifar10_subset_gpu/$attention-seed$seed.log" 2>&1 &
    done
    wait
  done
}
mkdir -p "$RUNS/cifar10_subset_gpu"
export -f sweep
step 150 sweep bash -c sweep
step 90 bench_train python3 benchmarks/bench_train.py --device cuda --amp bf16 --channels-last \
  --data-dir "$DATA" --rounds 3 > "$OUT/bench_train_gpu.txt" 2>&1
step 150 bench_nonlocal python3 benchmarks/bench_nonlocal.py --device cuda --dtype bf16 --modules all \
  --out "$OUT/bench_nonlocal_gpu.txt" > "$OUT/bench_nonlocal_gpu.log" 2>&1
step 60 bench_nlm python3 benchmarks/bench_nlm.py --device cuda --images camera astronaut --sigmas 25 \
  --quick > "$OUT/bench_nlm_gpu.txt" 2>&1
(cd "$RUNS" && find cifar10_subset_gpu \( -name summary.json -o -name metrics.jsonl -o -name '*.log' \) -print0 |
  tar --null -T - -czf "$OUT/cifar10_subset_gpu.tar.gz")
ls -l "$OUT"
