"""Train the diffusion MPNN, with or without REED alignment.

    python -m reed_protein.train --preset reed                      # offline data, ProteinMPNN targets
    python -m reed_protein.train --preset baseline epochs=100
    python -m reed_protein.train --preset reed --config my.yaml data.source=cath \\
        data.path=chain_set.jsonl data.splits=chain_set_splits.json
    python -m reed_protein.train --preset reed --slurm --slurm-partition gpu --slurm-gpus-per-node 1
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from reed_core.config import add_config_args, config_from_args
from reed_core.train import Trainer
from reed_protein.configs import PRESETS, ProteinConfig
from reed_protein.task import ProteinTask, load_data, resolve, write_split


def run(cfg: ProteinConfig) -> dict[str, float]:
    data = load_data(cfg.data)
    task = ProteinTask(cfg, data)
    cfg = resolve(cfg, task)
    write_split(cfg.train.run_dir, data)
    logging.getLogger(__name__).info(
        "train %d chains (%d steps/epoch), %s",
        len(task.train_set),
        task.steps_per_epoch,
        ", ".join(f"{s} {len(p)}" for s, p in task.eval_sets.items()),
    )
    return Trainer(cfg.train, task, experiment_config=cfg).fit()


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        prog="python -m reed_protein.train",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_config_args(parser, PRESETS)
    parser.add_argument("--run-dir", default=None, help="shorthand for train.run_dir=DIR")
    try:
        from reed_core.launch import add_slurm_args, launch_or_run
    except ImportError:  # submitit missing: local runs only
        add_slurm_args = launch_or_run = None
    if add_slurm_args is not None:
        add_slurm_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(ProteinConfig, PRESETS, args)
    if args.run_dir is not None:
        cfg = replace(cfg, train=replace(cfg.train, run_dir=args.run_dir))
    if launch_or_run is not None:
        return launch_or_run(run, cfg, args)
    return run(cfg)


if __name__ == "__main__":
    main()
