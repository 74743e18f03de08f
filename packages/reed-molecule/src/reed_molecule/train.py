"""Train a 3-D molecule flow, with or without REED alignment.

    python -m reed_molecule.train --preset qm9_reed data.path=data/qm9.npz
    python -m reed_molecule.train --preset qm9_baseline --config my.yaml train.steps=1000
    python -m reed_molecule.train --preset qm9_reed --slurm --slurm-partition gpu --slurm-gpus-per-node 1

Prepare the data and the target store first::

    python -m reed_molecule.data.qm9 --out data/qm9.npz
    python -m reed_molecule.targets --data data/qm9.npz --target chemnet \\
        --out data/features/qm9_chemnet --split train
"""

from __future__ import annotations

import argparse

from reed_core.launch import add_train_args, launch_or_run, train_config_from_args
from reed_core.train import Trainer
from reed_molecule.configs import PRESETS, MoleculeConfig


def run(cfg: MoleculeConfig) -> dict[str, float]:
    from reed_molecule.task import MoleculeTask

    return Trainer(cfg.train, MoleculeTask(cfg), experiment_config=cfg).fit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reed_molecule.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return add_train_args(parser, PRESETS)


def main(argv: list[str] | None = None):
    args = build_parser().parse_intermixed_args(argv)
    cfg = train_config_from_args(MoleculeConfig, PRESETS, args)
    return launch_or_run(run, cfg, args)


if __name__ == "__main__":
    main()
