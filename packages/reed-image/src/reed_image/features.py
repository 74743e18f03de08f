"""Precompute alignment targets into reed-core feature stores (once per data set and encoder).

    python -m reed_image.features --preset fmnist-reed                    # every enabled target
    python -m reed_image.features --preset fmnist-reed --targets caption --rebuild
    python -m reed_image.features --preset fmnist-reed reed.targets.vision.store=feats/vision

Stores go to ``reed.targets.<name>.store`` (default ``RUN_DIR/features/<name>``); training
then streams them. Vision stores hold encoder tokens ``[L, D]`` per image, caption stores one
embedding ``[1, D]`` per image plus ``captions.npz`` (distinct sentences, embeddings, index).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from reed_core.cli import main_guard
from reed_core.config import add_config_args, config_from_args
from reed_image.configs import PRESETS, ImageConfig
from reed_image.data import load_source
from reed_image.targets.build import ensure_store, store_root


@main_guard
def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, PRESETS)
    p.add_argument("--targets", default=None, help="comma-separated target names (default: all enabled)")
    p.add_argument("--rebuild", action="store_true", help="rebuild stores that already exist")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    cfg = config_from_args(ImageConfig, PRESETS, args)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    enabled = cfg.reed.enabled
    names = args.targets.split(",") if args.targets else list(enabled)
    unknown = [n for n in names if n not in enabled]
    if unknown:
        sys.exit(f"error: --targets: {unknown} are not enabled targets of this config ({list(enabled)})")
    d = cfg.data
    images, _ = load_source(d.source, d.path, d.split, d.resolution, d.fit, d.channels, d.download)
    images = images.subset(d.limit, seed=d.limit_seed)
    out = {}
    for name in names:
        if enabled[name].location == "online":
            print(json.dumps({"target": name, "store": None, "location": "online"}), flush=True)
            continue  # the encoder runs on each training batch: nothing to precompute
        store = ensure_store(name, enabled[name], images, cfg.train.run_dir, device, rebuild=args.rebuild)
        out[name] = str(store_root(name, enabled[name], cfg.train.run_dir))
        print(
            json.dumps(
                {
                    "target": name,
                    "store": out[name],
                    "examples": len(store),
                    "shape": [store.meta.fixed_length, *store.meta.shape],
                }
            ),
            flush=True,
        )
    return out


if __name__ == "__main__":
    main()
