"""Why does DANet's dual attention stall in ResNet-20? Cheap runs on the CIFAR-10 subset.

Each variant trains ResNet-20 for 10 epochs on the offline subset (first 1000 images of every
batch: 5000 train / 1000 test) with the recipe of ``python -m nltutorial.train`` (one-cycle
SGD, Nesterov 0.9, peak lr 0.1, weight decay 5e-4, label smoothing 0.1, batch 128, seed 0),
and logs per epoch: the training loss and accuracy, the test accuracy, the learnt scales
γ (PAM) and β (CAM) of every site, and how one-hot the maps are on 200 fixed test images
(the mean over rows of the largest weight: 1/N for a uniform map, 1 for a one-hot one).

Run from the repository root (one variant at a time; finished variants are skipped):

    python results/danet_subset/study.py [--data-dir ../shared/data/cifar-10-subset] [VARIANT ...]

Writes results/danet_subset/<variant>/metrics.jsonl and summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from nltutorial import engine
from nltutorial.danet import ChannelAttention, PositionAttention
from nltutorial.data import cifar10, cifar10_source
from nltutorial.loader import DeviceLoader
from nltutorial.models import cifar_resnet

OUT = Path(__file__).resolve().parent
#: variant -> (attention, block keyword arguments, peak lr, gradient-norm clip or None)
VARIANTS = {
    "danet": ("danet", {}, 0.1, None),
    "pam": ("pam", {}, 0.1, None),
    "cam": ("cam", {}, 0.1, None),
    "cam-official": ("cam", {"cam_energy": "official"}, 0.1, None),
    "danet-official": ("danet", {"cam_energy": "official"}, 0.1, None),
    "danet-lr0.05": ("danet", {}, 0.05, None),
    "danet-clip1": ("danet", {}, 0.1, 1.0),
    "danet-mean": ("danet", {"cam_energy": "mean"}, 0.1, None),   # CAM energy A Aᵀ / N: no one-hot map
    "cam-mean": ("cam", {"cam_energy": "mean"}, 0.1, None),
}
EPOCHS, BATCH, SEED, WD, SMOOTHING = 10, 128, 0, 5e-4, 0.1


def gammas(model: nn.Module) -> dict:
    """Mean learnt scale of the PAM (γ) and CAM (β) modules in the model."""
    out = {}
    for kind, cls in (("pam_gamma", PositionAttention), ("cam_gamma", ChannelAttention)):
        vals = [m.gamma.item() for m in model.modules() if isinstance(m, cls)]
        if vals:
            out[kind] = sum(vals) / len(vals)
    return out


def peakedness(model: nn.Module, x: torch.Tensor) -> dict:
    """Mean largest weight per row of the PAM and CAM maps on x (1 = one-hot rows)."""
    rows = {"pam_max_weight": [], "cam_max_weight": []}
    hooks = []
    for m in model.modules():
        key = ("pam_max_weight" if isinstance(m, PositionAttention) else
               "cam_max_weight" if isinstance(m, ChannelAttention) else None)
        if key is not None:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, key=key: rows[key].append(mod.attention(inp[0]).amax(-1).mean().item())))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {k: sum(v) / len(v) for k, v in rows.items() if v}


def run(variant: str, data_dir: str) -> None:
    out = OUT / variant
    if (out / "summary.json").exists():
        print(f"{variant}: done already")
        return
    attention, kwargs, lr, clip = VARIANTS[variant]
    train_x, train_y = cifar10(data_dir, train=True, per_batch=1000, download=False)
    test_x, test_y = cifar10(data_dir, train=False, per_batch=1000, download=False)
    device = torch.device("cpu")
    train_loader = DeviceLoader(train_x, train_y, BATCH, train=True, device=device, seed=SEED)
    test_loader = DeviceLoader(test_x, test_y, BATCH, train=False, device=device, seed=SEED)
    probe = next(iter(DeviceLoader(test_x[:200], test_y[:200], 200, train=False, device=device)))[0]
    torch.manual_seed(SEED)
    model = cifar_resnet("resnet20", num_classes=10, attention=attention, **kwargs)
    steps = len(train_loader)
    optimizer = engine.build_optimizer(model, lr, WD, 0.9)
    scheduler = engine.build_scheduler(optimizer, "onecycle", lr, EPOCHS * steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=SMOOTHING)
    history, t0 = [], time.perf_counter()
    for epoch in range(EPOCHS):
        engine.seed_epoch(SEED, epoch)
        train_loader.set_epoch(epoch)
        model.train()
        loss_sum, correct, seen, grad_norms = 0.0, 0, 0, []
        for x, y in train_loader:
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))
            grad_norms.append(norm.item())
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        test = engine.evaluate(model, test_loader, device=device)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
               **test, "lr_peak": lr, "grad_norm_median": sorted(grad_norms)[len(grad_norms) // 2],
               **gammas(model), **peakedness(model, probe)}
        history.append(row)
        print(variant, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    summary = {"variant": variant, "attention": attention, "kwargs": kwargs, "lr": lr, "grad_clip": clip,
               "epochs": EPOCHS, "batch_size": BATCH, "seed": SEED, "weight_decay": WD,
               "label_smoothing": SMOOTHING, "test_accuracy": history[-1]["test_accuracy"],
               "data": {"train_images": len(train_x), "test_images": len(test_x),
                        "source": cifar10_source(data_dir)},
               "torch": torch.__version__, "wall_seconds": time.perf_counter() - t0,
               "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "summary.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar-10-subset")
    p.add_argument("variants", nargs="*", metavar="VARIANT", help=f"default: all of {list(VARIANTS)}")
    args = p.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(1)
    for v in args.variants or list(VARIANTS):
        run(v, args.data_dir)


if __name__ == "__main__":
    main()
