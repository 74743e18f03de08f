"""Train a 3-D molecule flow, with or without REED alignment.

    python -m reed_molecule.train --preset qm9_reed data.path=data/qm9.npz
    python -m reed_molecule.train --preset qm9_baseline --config my.yaml train.steps=1000
    python -m reed_molecule.train --preset qm9_reed reed.targets.chemnet.depth=3 \
        reed.curriculum.w_diff.end=10 reed.curriculum.unit=epoch
    python -m reed_molecule.train --preset qm9_reed --slurm --slurm-partition gpu --slurm-gpus-per-node 1

The QM9 presets need the data and the target store prepared first::

    python -m reed_molecule.data.qm9 --out data/qm9.npz
    python -m reed_molecule.targets --data data/qm9.npz --target chemnet \\
        --out data/features/qm9_chemnet --split train

The tiny preset needs nothing prepared: it reads the 64 QM9 molecules shipped with the package
(``data.path=packaged:qm9_64``) and builds its ChemNet store in the run folder on first use::

    python -m reed_molecule.train --preset tiny --run-dir runs/tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reed_core.cli import UserError, UserFileError, main_guard
from reed_core.launch import add_train_args, launch_or_run, train_config_from_args
from reed_core.train import Trainer
from reed_molecule.configs import PRESETS, MoleculeConfig


def run(cfg: MoleculeConfig) -> dict[str, float]:
    from reed_molecule.data.arrays import MoleculeArrays
    from reed_molecule.task import MoleculeTask

    check_inputs(cfg)
    try:
        arrays = MoleculeArrays.load(cfg.data.path)
    except ValueError as err:  # not a MoleculeArrays file
        raise UserError(f"data.path: {err}") from err
    return Trainer(cfg.train, MoleculeTask(cfg, arrays), experiment_config=cfg).fit()


def check_inputs(cfg: MoleculeConfig) -> None:
    """The prepared data and target stores exist (checked before anything is written). A target
    whose ``store`` is empty gets one built in the run folder by
    :func:`reed_molecule.task.ensure_target_store`."""
    from reed_molecule.fixtures import resolve_data_path

    try:
        data = resolve_data_path(cfg.data.path)
    except UserError as err:
        raise UserError(f"data.path: {err}") from None
    if not data.is_file():
        raise UserFileError(
            f"data.path: {data} does not exist; prepare QM9 with `python -m reed_molecule.data.qm9 "
            f"--out {data}`, or point data.path at a MoleculeArrays .npz"
        )
    for name, target in cfg.reed.enabled.items():
        if target.store and not (Path(target.store) / "meta.json").is_file():
            kind = name if name in ("chemnet", "descriptors", "morgan", "unimol") else "KIND"
            raise UserFileError(
                f"reed.targets.{name}.store: no feature store at {target.store!r}; build it with `python -m "
                f"reed_molecule.targets --data {cfg.data.path} --target {kind} --out {target.store} --split "
                f"{cfg.data.train_split}`, or leave the target out (--preset qm9_baseline)"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reed_molecule.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return add_train_args(parser, PRESETS)


@main_guard
def main(argv: list[str] | None = None):
    args = build_parser().parse_intermixed_args(argv)
    cfg = train_config_from_args(MoleculeConfig, PRESETS, args)
    return launch_or_run(run, cfg, args)


if __name__ == "__main__":
    main()
