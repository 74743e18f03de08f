"""Reading trained denoisers back from reed-core checkpoints (``run_dir/checkpoints/last.pt``)."""

from __future__ import annotations

from pathlib import Path

import torch

from reed_core.config import ConfigError, RenamedKeyError, config_from_dict
from reed_core.train import CheckpointError, load_checkpoint
from reed_image.configs import ImageConfig
from reed_image.models import SiT, build_sit

WEIGHTS = ("ema", "raw")


def load_denoiser(
    path: str | Path, weights: str = "ema", device: str | torch.device = "cpu"
) -> tuple[ImageConfig, SiT, int]:
    """``(config, SiT with the chosen weights, step)`` from a checkpoint written by the trainer.

    Raises :class:`reed_core.train.CheckpointError` naming the file when it is missing, corrupt,
    or not an image-domain checkpoint.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"--weights: unknown {weights!r}; choose one of {WEIGHTS}")
    state = load_checkpoint(path, map_location="cpu")
    try:
        cfg = config_from_dict(ImageConfig, state["config"])
    except RenamedKeyError as err:
        raise CheckpointError(f"checkpoint {path}: its config uses keys of an older version: {err}") from err
    except (KeyError, ConfigError) as err:
        raise CheckpointError(f"checkpoint {path}: not a reed-image run ({err})") from err
    key = "ema" if weights == "ema" else "model"
    prefix = "denoiser."
    sd = {k[len(prefix) :]: v for k, v in state[key].items() if k.startswith(prefix)}
    model = build_sit(cfg.model)
    try:
        model.load_state_dict(sd)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit {cfg.model.arch} ({err})") from err
    return cfg, model.to(device).eval(), int(state["step"])
