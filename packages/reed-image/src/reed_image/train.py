"""Train SiT with REED (or vanilla / single-target) on images through reed-core's Trainer.

    python -m reed_image.train --preset quickstart                  # 2-core CPU, a few minutes
    python -m reed_image.train --preset fmnist-reed train.steps=4000
    python -m reed_image.train --preset imagenet-reed data.path=latents.npz --slurm \\
        --slurm-partition gpu --slurm-gpus-per-node 8 --slurm-time 2880

Targets missing a feature store are precomputed once (``RUN_DIR/features/<name>``) before the
first step. The resolved config is saved as ``RUN_DIR/config.yaml``; a run resumes from
``RUN_DIR/checkpoints/last.pt``; samples go to ``RUN_DIR/samples``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from reed_core.cli import main_guard
from reed_core.config import ConfigError
from reed_core.launch import add_train_args, launch_or_run, train_config_from_args
from reed_core.train import Trainer
from reed_image.configs import PRESETS, ImageConfig
from reed_image.task import ImageTask


def run(cfg: ImageConfig) -> dict[str, float]:
    task = ImageTask(cfg)
    result = Trainer(cfg.train, task, experiment_config=cfg).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        if metrics:
            print(json.dumps(metrics), flush=True)
        for grid in last_sample_grids(cfg.train.run_dir):
            print(f"sample grid: {grid.resolve()}", flush=True)
    return result


def last_sample_grids(run_dir: str | Path) -> list[Path]:
    """The sample grid PNGs of the latest evaluated step (``RUN_DIR/samples/<weights>_stepNNNNNNN.png``)."""
    grids = list(Path(run_dir, "samples").glob("*_step*.png"))
    steps = {g: g.stem.rsplit("_step", 1)[-1] for g in grids}  # zero-padded: sorts as numbers
    last = max(steps.values(), default=None)
    return sorted(g for g in grids if steps[g] == last)


def check_model(cfg: ImageConfig) -> None:
    """The model settings that only building the model would check, checked before anything is
    written (a bad ``model.*`` value would otherwise surface after the feature stores are built)."""
    try:
        cfg.model.resolved()
    except ValueError as err:
        raise ConfigError(str(err)) from err


@main_guard
def main(argv: list[str] | None = None) -> Any:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(p, PRESETS)
    args = p.parse_intermixed_args(argv)
    cfg = train_config_from_args(ImageConfig, PRESETS, args)
    check_model(cfg)
    return launch_or_run(run, cfg, args)


if __name__ == "__main__":
    main()
