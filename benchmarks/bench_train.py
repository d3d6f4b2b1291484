"""Benchmark training on CIFAR-10: the cost of each attention block, and the data loaders.

1. Epoch time of ResNet-20 with each attention block (``--attention`` of the training CLI)
   on the offline subset (5000 training images, batch 128, SGD, the CLI's training step via
   ``nltutorial.engine.train_epoch``), as a ratio to the plain ResNet-20. The variants are
   interleaved round by round (``--rounds``) and each reports its median epoch, so a loaded
   machine slows them alike.
2. One epoch of augmented batches (random crop with 4-pixel padding + horizontal flip,
   normalisation), no model: ``nltutorial.loader.DeviceLoader`` (whole set in one tensor,
   vectorised augmentation) against ``torch.utils.data.DataLoader`` over a per-sample
   ``Dataset`` doing the same augmentation (num_workers 0 and 2), as ratios.

Everything runs in one process; compare the ratios, not the absolute times.

    python benchmarks/bench_train.py --data-dir ../shared/data/cifar-10-subset
    python benchmarks/bench_train.py --device cuda --amp bf16 --channels-last --data-dir DIR
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from nltutorial import engine
from nltutorial.data import CIFAR10_MEAN, CIFAR10_STD, cifar10, locate_cifar10
from nltutorial.loader import DeviceLoader
from nltutorial.models import cifar_resnet

VARIANTS = ("none", "se", "cbam", "bam", "gc", "nl", "danet")


class AugmentedCifar(torch.utils.data.Dataset):
    """The per-sample equivalent of DeviceLoader(train=True): pad 4, random 32×32 crop, flip."""

    def __init__(self, images, labels):
        self.images = torch.as_tensor(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
        self.labels = torch.as_tensor(labels)
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float().div_(255)  # (3, 32, 32)
        x = nn.functional.pad(x, (4, 4, 4, 4))  # (3, 40, 40), black border
        r, c = torch.randint(0, 9, (2,)).tolist()
        x = x[:, r:r + 32, c:c + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[i]


def epoch_time(model, loader, optimizer, scheduler, criterion, device, amp):
    t0 = time.perf_counter()
    engine.train_epoch(model, loader, optimizer, scheduler, criterion, device=device, amp=amp,
                       steps=len(loader))
    return time.perf_counter() - t0


def bench_blocks(args, images, labels, device):
    loader = DeviceLoader(images, labels, args.batch_size, train=True, device=device, seed=0,
                          channels_last=args.channels_last)
    steps = len(loader) * (args.rounds + 1)
    setups = {}
    for name in args.variants:
        torch.manual_seed(0)
        model = cifar_resnet("resnet20", attention=None if name == "none" else name).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = engine.build_optimizer(model, 0.05, 5e-4, 0.9)
        sched = engine.build_scheduler(opt, "cosine", 0.05, steps)
        setups[name] = (model, opt, sched)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    times = {name: [] for name in args.variants}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (model, opt, sched) in setups.items():
            t = epoch_time(model, loader, opt, sched, criterion, device, args.amp)
            if r > 0:
                times[name].append(t)
    base = statistics.median(times["none"]) if "none" in times else None
    print(f"\n1) ResNet-20 training epoch ({len(labels)} images, batch {args.batch_size}, {device}, "
          f"amp {args.amp}, median of {args.rounds} interleaved rounds)")
    print(f"{'attention':>10} {'epoch s':>9} {'img/s':>8} {'vs none':>8}")
    for name, ts in times.items():
        t = statistics.median(ts)
        ratio = f"{t / base:8.2f}" if base else "       -"
        print(f"{name:>10} {t:9.2f} {len(loader) * args.batch_size / t:8.0f} {ratio}")


def bench_loaders(args, images, labels, device):
    def run_device():
        loader = DeviceLoader(images, labels, args.batch_size, train=True, device=device, seed=0)
        for x, y in loader:
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()

    dataset = AugmentedCifar(images, labels)

    def run_dataloader(workers):
        def run():
            loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                                 drop_last=True, num_workers=workers,
                                                 pin_memory=device.type == "cuda",
                                                 persistent_workers=False)
            for x, y in loader:
                x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

    runs = {"DeviceLoader": run_device, "DataLoader w0": run_dataloader(0), "DataLoader w2": run_dataloader(2)}
    times = {k: [] for k in runs}
    for r in range(args.rounds + 1):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["DeviceLoader"])
    print(f"\n2) one epoch of augmented batches, no model ({len(labels)} images, batch {args.batch_size}, "
          f"{device}, median of {args.rounds} rounds)")
    print(f"{'loader':>14} {'epoch s':>9} {'img/s':>9} {'time / DeviceLoader':>20}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:>14} {t:9.3f} {len(labels) / t:9.0f} {t / base:20.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="root holding cifar-10-batches-py (default: located)")
    p.add_argument("--per-batch", type=int, default=1000, help="first N images of each batch (1000 = subset)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--skip-loaders", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, labels = cifar10(locate_cifar10(args.data_dir), train=True, per_batch=args.per_batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    bench_blocks(args, images, labels, device)
    if not args.skip_loaders:
        bench_loaders(args, images, labels, device)


if __name__ == "__main__":
    main()
