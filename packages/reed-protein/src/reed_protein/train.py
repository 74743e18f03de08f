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
    from reed_core.launch import add_train_args, launch_or_run, train_config_from_args

    add_train_args(parser, PRESETS)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = train_config_from_args(ProteinConfig, PRESETS, args)
    return launch_or_run(run, cfg, args)


if __name__ == "__main__":
    main()
