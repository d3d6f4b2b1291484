#!/usr/bin/env bash
# The CPU sweep behind chapter 8's table: C2D and I3D video ResNets, with and without space-time
# non-local blocks (NL3D after the res3/res4-style stages), five seeds, 10 epochs on the generated
# moving-shapes task (4000 train / 1000 val clips of 8 frames at 32x32; label: does the shape of
# the first frames reappear in the last ones). Run from the repository root:
#     bash results/moving_shapes/sweep.sh
# Each run writes results/moving_shapes/<model>-<attention>/seed<k>/{metrics.jsonl,summary.json}
# (summary.json records the exact command, commit, torch version and machine).
set -euo pipefail
for seed in 0 1 2 3 4; do
  for model in c2d i3d; do
    for attention in none nl3d; do
      out=results/moving_shapes/$model-$attention/seed$seed
      [ -f "$out/summary.json" ] && continue
      python3 -m nltutorial.train --data moving-shapes --model "$model" --attention "$attention" \
        --frames 8 --size 32 --train-subset 4000 --test-subset 1000 \
        --epochs 10 --batch-size 32 --lr 0.1 --schedule onecycle --label-smoothing 0 \
        --device cpu --seed "$seed" --out "$out" --overwrite --no-progress
    done
  done
done
