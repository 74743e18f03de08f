"""How much the FD depends on which copy of the evaluation classifier measures it.

Two classifiers trained by the same recipe (``python -m reed_image.eval_classifier --epochs 6``)
differ in their weights (GPU vs CPU, run to run), so their FD values differ. This script scores
the same real-image sets (5,000 training images, clean and distorted: Gaussian noise, blur,
2x down-up sampling, lower contrast) against the test split under each classifier and prints the
two FDs and their ratio.

    python experiments/image/classifier_agreement.py experiments/image/fmnist-classifier-32.pt \\
        other-classifier.pt --data-path .carry/image/fashion-mnist
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from reed_image.data import load_source, to_unit_range
from reed_image.metrics import Evaluator, load_classifier


def distorted_sets(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Real images in [-1, 1] and distorted copies whose FDs span the range of trained models'."""
    g = torch.Generator().manual_seed(0)
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])[None, None] / 16
    sets = {"clean": x}
    for sigma in (0.05, 0.1, 0.2, 0.3):
        sets[f"noise {sigma}"] = (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    sets["blur 3x3"] = F.conv2d(x, blur, padding=1)
    sets["blur 3x3 twice"] = F.conv2d(sets["blur 3x3"], blur, padding=1)
    sets["2x down-up"] = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    sets["contrast 0.8"] = 0.8 * x
    return sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("classifier_a")
    p.add_argument("classifier_b")
    p.add_argument("--data-path", default=None, help="Fashion-MNIST folder (default: the Debian package)")
    p.add_argument("--num", type=int, default=5000, help="training images per set")
    args = p.parse_args()
    reference, _ = load_source("fashion-mnist", args.data_path, "test", 32, "pad", 1, False)
    train, _ = load_source("fashion-mnist", args.data_path, "train", 32, "pad", 1, False)
    x = to_unit_range(train.subset(args.num, seed=1).images).float()
    a, b = (Evaluator(load_classifier(c, "cpu"), to_unit_range(reference.images)) for c in
            (args.classifier_a, args.classifier_b))  # fmt: skip
    print("| set | FD (A) | FD (B) | B / A |\n| --- | --- | --- | --- |")
    for name, images in distorted_sets(x).items():
        fd_a, fd_b = a(images).fd, b(images).fd
        print(f"| {name} | {fd_a:.3f} | {fd_b:.3f} | {fd_b / fd_a:.3f} |")


if __name__ == "__main__":
    main()
