"""Train the diffusion MPNN, with or without REED alignment.

    python -m reed_protein.train --preset reed                      # offline data, ProteinMPNN targets
    python -m reed_protein.train --preset baseline epochs=100
    python -m reed_protein.train --preset reed reed.targets.pair.store=work/targets/pair \
        reed.curriculum.w_align.end=100 reed.align_scale=0.5
    python -m reed_protein.train --preset tiny --steps 2           # a step budget replaces epochs
    python -m reed_protein.train --preset reed --config my.yaml data.source=cath \\
        data.path=chain_set.jsonl data.splits=chain_set_splits.json
    python -m reed_protein.train --preset reed --slurm --slurm-partition gpu --slurm-gpus-per-node 1
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from reed_core.cli import UserError, main_guard
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


def step_budget(cfg: ProteinConfig, args: argparse.Namespace) -> ProteinConfig:
    """An explicit step count on the command line (``--steps N`` or ``train.steps=N``) wins over
    the ``epochs`` of the preset or ``--config`` file (it sets ``epochs=0``); ``epochs=N`` given on
    the command line too is refused, since the two budgets disagree."""
    keys = [text.split("=", 1)[0].strip() for text in args.overrides]
    steps_flag = "--steps" if args.steps is not None else ("train.steps" if "train.steps" in keys else None)
    if steps_flag is None:
        return cfg
    if "epochs" in keys and cfg.epochs:
        raise UserError(
            f"{steps_flag} and epochs={cfg.epochs} both set the training budget; give one of them "
            "(epochs=0 with train.steps=N, or epochs=N alone)"
        )
    return replace(cfg, epochs=0)


@main_guard
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
    cfg = step_budget(train_config_from_args(ProteinConfig, PRESETS, args), args)
    return launch_or_run(run, cfg, args)


if __name__ == "__main__":
    main()
