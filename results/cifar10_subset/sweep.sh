#!/usr/bin/env bash
# The CPU sweep behind chapter 7's table: ResNet-20 with each attention block, three seeds,
# 10 epochs on the offline CIFAR-10 subset (the first 1000 images of every batch: 5000 train /
# 1000 test). Run from the repository root:
#     bash results/cifar10_subset/sweep.sh [DATA_DIR]
# Each run writes results/cifar10_subset/<attention>/seed<k>/{metrics.jsonl,summary.json}
# (summary.json records the exact command, commit, torch version and machine).
set -euo pipefail
DATA=${1:-../shared/data/cifar-10-subset}
for seed in 0 1 2; do
  for attention in none se cbam bam gc nl danet; do
    out=results/cifar10_subset/$attention/seed$seed
    [ -f "$out/summary.json" ] && continue
    python3 -m nltutorial.train --data cifar10 --data-dir "$DATA" --per-batch 1000 \
      --model resnet20 --attention "$attention" --epochs 10 --batch-size 128 --lr 0.1 \
      --schedule onecycle --label-smoothing 0.1 --device cpu --seed "$seed" \
      --out "$out" --overwrite --no-progress
  done
done
