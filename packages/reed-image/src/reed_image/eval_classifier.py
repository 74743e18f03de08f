"""Train the evaluation classifier once on the train split; report test accuracy; cache it.

    python -m reed_image.eval_classifier --out ~/.cache/reed/fmnist-classifier-32.pt

The classifier (:mod:`reed_image.models.classifier`) supplies the features of the Frechet
distance, precision/recall and the IS-style score. It never serves as an alignment target.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reed_core.cli import main_guard
from reed_image.data import load_source, to_unit_range
from reed_image.models.classifier import Classifier, ClassifierConfig


def default_classifier_path(source: str = "fashion-mnist", resolution: int = 32) -> Path:
    cache = Path(os.environ.get("REED_CACHE", Path.home() / ".cache" / "reed"))
    return cache / f"{source}-classifier-{resolution}.pt"


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on uint8 ``images``."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        _, logits = model(to_unit_range(images[i : i + batch]))
        correct += (logits.argmax(-1) == labels[i : i + batch]).sum().item()
    return correct / len(images)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each batch by up to ``max_shift`` pixels (zero fill), a cheap augmentation."""
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if dy > 0:
        x[:, :, :dy] = 0
    elif dy < 0:
        x[:, :, dy:] = 0
    if dx > 0:
        x[:, :, :, :dx] = 0
    elif dx < 0:
        x[:, :, :, dx:] = 0
    return x


def train_classifier(
    source: str = "fashion-mnist",
    path: str | None = None,
    resolution: int = 32,
    fit: str = "pad",
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    limit: int | None = None,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    device: str = "cpu",
    log=lambda msg: print(msg, flush=True),
) -> tuple[Classifier, dict]:
    train, _ = load_source(source, path, "train", resolution, fit)
    test, _ = load_source(source, path, "test", resolution, fit)
    train, test = train.subset(limit, seed), test.subset(limit, seed)
    batch_size = min(batch_size, len(train))  # tiny data sets (tests) still take steps
    torch.manual_seed(seed)
    model = Classifier(ClassifierConfig(train.shape[0], resolution, train.num_classes, widths))
    model = model.to(device)
    train_x, train_y = train.images.to(device), train.labels.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    t0, step = time.time(), 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size].to(device)
            x = random_shift(train_x[idx], 2, g)
            _, logits = model(to_unit_range(x))
            loss = F.cross_entropy(logits, train_y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model = model.cpu()
    info = {
        "source": source,
        "resolution": resolution,
        "fit": fit,
        "epochs": epochs,
        "train_examples": len(train),
        "test_examples": len(test),
        "train_accuracy": accuracy(model, train.images[:10000], train.labels[:10000]),
        "test_accuracy": accuracy(model, test.images, test.labels),
        "train_seconds": round(time.time() - t0, 1),
    }
    return model.eval(), info


@main_guard
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (default: cache folder)")
    p.add_argument("--source", default="fashion-mnist")
    p.add_argument("--data-path", default=None, help="data folder (default: Debian package path)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--fit", default="pad", choices=("pad", "resize"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only this many examples per split")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    out = args.out or default_classifier_path(args.source, args.resolution)
    model, info = train_classifier(
        args.source,
        args.data_path,
        args.resolution,
        args.fit,
        args.epochs,
        args.batch_size,
        args.lr,
        args.seed,
        args.limit,
        device=args.device,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(model.checkpoint(**info), tmp)
    os.replace(tmp, out)
    print(json.dumps({"classifier": str(out), **info}, indent=1))
    return info


if __name__ == "__main__":
    main()
