"""Evaluate samples: Frechet distance, precision/recall and an IS-style score.

Features come from the evaluation classifier (never an alignment target), trained once with
``python -m reed_image.eval_classifier``. Reference statistics use the data config's source at
``eval.reference_split``. Evaluate an ADM-layout ``.npz`` or sample a checkpoint first::

    python -m reed_image.evaluate --samples runs/x/samples.npz --preset fmnist-reed
    python -m reed_image.evaluate --checkpoint runs/x/checkpoints/last.pt eval.num_samples=5000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from reed_core.cli import main_guard
from reed_core.config import add_config_args, config_from_args, load_config
from reed_image.checkpoints import load_denoiser
from reed_image.configs import PRESETS, ImageConfig
from reed_image.evaluator import build_evaluator
from reed_image.generation import generate
from reed_image.image_io import load_npz_images
from reed_image.interpolants import Interpolant


@main_guard
def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, PRESETS)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", type=Path, help="ADM-layout .npz (arr_0 uint8 [N, H, W, 3])")
    src.add_argument("--checkpoint", type=Path, help="sample this checkpoint (its config is used)")
    p.add_argument("--weights", default="ema", choices=("ema", "raw"))
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    args = p.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.checkpoint is not None:
        ckpt_cfg, denoiser, _ = load_denoiser(args.checkpoint, args.weights, device)
        # command-line overrides apply on top of the checkpoint's own config
        cfg = load_config(ImageConfig, {"ckpt": lambda: ckpt_cfg}, "ckpt", args.config, args.overrides)
        x, _ = generate(
            denoiser,
            cfg,
            cfg.eval.num_samples,
            cfg.eval.sampler,
            Interpolant(cfg.objective.interpolant),
            cfg.model.num_classes,
            cfg.eval.batch_size,
        )
    else:
        cfg = config_from_args(ImageConfig, PRESETS, args)
        x = load_npz_images(args.samples)
    if x.shape[1] == 3 and cfg.model.in_channels == 1 and cfg.data.source == "fashion-mnist":
        x = x[:, :1]  # ADM files repeat grey to RGB
    try:
        result = build_evaluator(cfg, device)(x).as_dict()
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
