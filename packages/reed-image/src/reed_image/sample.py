"""Sample a trained SiT: a PNG grid and an ADM-layout ``.npz``.

    python -m reed_image.sample --checkpoint runs/quickstart/checkpoints/last.pt --num 100 \\
        --out runs/quickstart/samples sample.method=sde sample.steps=250 sample.cfg_scale=1.5

The checkpoint carries its config; ``--preset`` takes that preset's sampler settings, and
``--config FILE`` and ``sample.*`` overrides (method euler | heun | sde, steps,
cfg_scale, guidance_low/high, diffusion_form/norm, seed) apply on top. The same checkpoint, seed
and device give the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from reed_core.cli import main_guard
from reed_core.config import ConfigError, add_config_args, load_config
from reed_image.checkpoints import load_denoiser
from reed_image.configs import PRESETS, ImageConfig
from reed_image.data.latents import load_latents, load_vae
from reed_image.generation import generate
from reed_image.image_io import save_grid, save_npz
from reed_image.interpolants import Interpolant


@main_guard
def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    add_config_args(p, PRESETS)
    p.add_argument("--num", type=int, default=100, help="number of images")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--weights", default="ema", choices=("ema", "raw"))
    p.add_argument("--out", type=Path, default=None, help="folder (default: RUN_DIR/samples)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    try:
        ckpt_cfg, denoiser, step = load_denoiser(args.checkpoint, args.weights, device)
        if args.preset is not None:  # a preset contributes its sampler settings only
            ckpt_cfg = replace(ckpt_cfg, sample=PRESETS[args.preset]().sample)
        cfg = load_config(ImageConfig, {"ckpt": lambda: ckpt_cfg}, "ckpt", args.config, args.overrides)
    except (ConfigError, ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    vae, scale = None, None
    if cfg.data.source == "latents":
        if cfg.vae is None:
            sys.exit("error: vae: the model generates VAE latents; pass vae=<hub name or folder>")
        vae = load_vae(cfg.vae, device)
        _, scale = load_latents(cfg.data.path)
    x, labels = generate(
        denoiser,
        cfg,
        args.num,
        cfg.sample,
        Interpolant(cfg.objective.interpolant),
        cfg.model.num_classes,
        args.batch_size,
        scale,
        vae,
    )
    out = args.out or Path(cfg.train.run_dir) / "samples"
    tag = f"{args.weights}_step{step:07d}_{cfg.sample.method}{cfg.sample.steps}_seed{cfg.sample.seed}"
    grid = save_grid(x[:100], out / f"{tag}.png", nrow=10, scale=2)
    npz = save_npz(x, out / f"{tag}.npz", labels)
    print(json.dumps({"grid": str(grid), "npz": str(npz), "num": len(x), "step": step}))
    return grid


if __name__ == "__main__":
    main()
