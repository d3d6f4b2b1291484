#!/usr/bin/env bash
# The full-data sweep behind chapter 7: ResNet-20 with each attention block on all of CIFAR-10
# (50 000 train / 10 000 test), one schedule for every block: 40 epochs, one-cycle, peak lr 0.1,
# batch 128, Nesterov momentum 0.9, weight decay 5e-4, label smoothing 0.1, channels-last (the
# fastest exact CPU setting measured: results/README.md). 40 epochs because 30 left plain
# ResNet-20 at 90.83 % (results/cifar10_schedule/epochs30/seed0), short of the 91 % bar.
# Run from the repository root, one run at a time, in the background:
#     nohup bash results/cifar10_full/sweep.sh [DATA_DIR] > results/cifar10_full/sweep.log 2>&1 &
# Every run uses --resume: an interrupted run continues from its checkpoint, a finished one
# (summary.json present) is skipped. Order: plain ResNet-20 first (it fixes the schedule),
# then seed 0 of every block, then the remaining seeds. DANet uses --cam-energy mean, the
# setting results/danet_subset/ found to train (chapter 7, "Why DANet collapses").
# Each run writes results/cifar10_full/<attention>/seed<k>/{metrics.jsonl,summary.json}
# (and model.pt for seed 0, the weights chapter 7 loads); the checkpoints, and the other seeds'
# weights (git-ignored, so not recorded), are deleted once a run has finished.
set -euo pipefail
DATA=${1:-../shared/data/cifar-10}
run() {  # attention seed [extra options]
  local attention=$1 seed=$2; shift 2
  local out=results/cifar10_full/$attention/seed$seed
  if [ -f "$out/summary.json" ]; then return; fi
  python3 -m nltutorial.train --data cifar10 --data-dir "$DATA" \
    --model resnet20 --attention "$attention" --epochs 40 --batch-size 128 --lr 0.1 \
    --schedule onecycle --label-smoothing 0.1 --weight-decay 5e-4 --channels-last \
    --device cpu --seed "$seed" --out "$out" --resume --no-progress "$@"
  rm -f "$out/checkpoint.pt"
  if [ "$seed" != 0 ]; then rm -f "$out/model.pt"; fi
}
run none 0
for attention in se cbam bam gc nl; do run "$attention" 0; done
run danet 0 --cam-energy mean   # CAM energies / N: the paper's softmax(A Aᵀ) collapses (chapter 7)
run none 1
run none 2
for attention in se cbam bam gc nl; do run "$attention" 1; done
run danet 1 --cam-energy mean
