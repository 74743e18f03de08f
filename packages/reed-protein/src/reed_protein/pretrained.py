"""The pretrained checkpoint that ships with the package, and the exporter that makes such files.

    python -m reed_protein.pretrained runs/protein/small src/reed_protein/weights/reed_small.pt

A *design checkpoint* keeps only what ``reed-protein design`` needs: the denoiser's EMA (or raw)
weights, stored as float16, and the run's config (from which the model is rebuilt). Optimizer
state, the aligner's projectors (training-only), the raw/EMA twin and RNG state are dropped, which
makes a 0.5 M-parameter model about 1 MB. :func:`reed_protein.cli.load_denoiser` reads both this
format and full training checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

FORMAT = "reed-protein-design-checkpoint"
VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "reed_small.pt"
# what the shipped file is, for --help and the README (measured: see the package README)
DEFAULT_DESCRIPTION = (
    "REED-small, shipped with the package: 0.52 M parameters, trained 20 epochs on the 134 train "
    "chains of the offline cluster split; held-out test recovery 22.0%"
)


def is_design_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and state.get("format") == FORMAT


def export_design_checkpoint(
    src: str | Path, out: str | Path, weights: str = "ema", dtype: torch.dtype = torch.float16
) -> Path:
    """Write the design checkpoint of a training run (a run folder or its ``last.pt``) to ``out``."""
    from reed_core.train import load_checkpoint

    src = Path(src)
    if src.is_dir():
        src = src / "checkpoints" / "last.pt"
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights: choose ema or raw, got {weights!r}")
    state = load_checkpoint(src, map_location="cpu")
    params = state["ema" if weights == "ema" else "model"]
    prefix = "denoiser."
    denoiser = {
        k[len(prefix) :]: (v.to(dtype) if v.is_floating_point() else v).clone()
        for k, v in params.items()
        if k.startswith(prefix)
    }
    if not denoiser:
        raise ValueError(f"checkpoint {src}: holds no denoiser weights")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "version": VERSION,
            "config": state.get("config", {}),
            "denoiser": denoiser,
            "weights": weights,
            "step": int(state.get("step", 0)),
        },
        out,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reed_protein.pretrained",
        description="export a training run's denoiser as a small design checkpoint",
    )
    parser.add_argument("run", help="run folder or checkpoints/last.pt of a reed-protein training run")
    parser.add_argument("out", help="the design checkpoint to write (.pt)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    args = parser.parse_args(argv)
    out = export_design_checkpoint(args.run, args.out, args.weights, getattr(torch, args.dtype))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
