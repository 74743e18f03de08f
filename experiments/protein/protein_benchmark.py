"""Steps of the protein benchmark (baseline vs REED on the offline split); see protein_benchmark.sh.

    python experiments/protein/protein_benchmark.py stores --data offline.npz --out work/targets
    python experiments/protein/protein_benchmark.py plan --data offline.npz --stores work/targets \\
        --seconds 380 --out work/configs

``stores`` precomputes the pretrained ProteinMPNN encoder's node (structure) and edge (pair)
features of every chain into reed-core feature stores (for large sets, leave ``--stores`` out of
``plan``: the frozen encoder then runs on each batch, as the targets' ``store=""`` says). ``plan``
times training steps of both configurations and one evaluation on this machine, picks the largest
epoch budget ``E`` that lets every run (baseline and REED at each of ``--seeds``) finish in
``--seconds`` when run side by side, scales the paper's curriculum to it (diffusion warm-up ``E/6``
epochs, cosine alignment decay over ``2E/3``: 50 and 200 at E = 300) and writes one config file per
run, ``{baseline,reed}-s{seed}.yaml``. The runs share model, data, batches and epoch budget; a pair
of baseline and REED runs shares its seed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from reed_core.config import config_from_dict, config_to_dict, parse_override, save_config
from reed_core.curriculum import CurriculumConfig
from reed_core.schedules import cosine_decay, linear_warmup
from reed_core.train import Trainer
from reed_protein.configs import EvalConfig, ProteinConfig, baseline, reed
from reed_protein.configs import proteinmpnn_targets as pm_targets
from reed_protein.data.datasets import load_proteins
from reed_protein.evaluate import evaluate_model
from reed_protein.targets import ProteinMPNNTargets, build_target_stores
from reed_protein.task import ProteinTask, load_data


def cmd_stores(args: argparse.Namespace) -> None:
    proteins = load_proteins(args.data).proteins
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = build_target_stores(
        proteins,
        ProteinMPNNTargets(args.weights),
        args.out,
        k=30,
        batch_size=8,
        device=device,
        overwrite=True,
    )
    print(
        f"stores {', '.join(map(str, paths.values()))}: {len(proteins)} chains in "
        f"{time.perf_counter() - t0:.1f} s"
    )


def configure(
    base: ProteinConfig, args, name: str, epochs: int, every: int, seed: int = 0
) -> ProteinConfig:
    data = replace(base.data, source="npz", path=args.data, max_tokens=args.max_tokens)
    targets = pm_targets(args.stores) if base.reed.targets else {}
    curriculum = CurriculumConfig(unit="epoch")  # the baseline: constant weights
    warmup, decay = round(epochs / 6), round(2 * epochs / 3)
    if targets and warmup:
        curriculum = replace(curriculum, w_diff=linear_warmup(0, warmup))
    if targets and decay:
        curriculum = replace(curriculum, w_align=cosine_decay(0, decay))
    cfg = replace(
        base,
        epochs=epochs,
        data=data,
        reed=replace(base.reed, targets=targets, curriculum=curriculum),
        train=replace(
            base.train,
            run_dir=f"{args.runs}/{name}",
            progress_bar=False,
            tensorboard=False,
            seed=seed,
            log_every=10,
            ckpt_every=args.ckpt_every,
            # checkpoints/best.pt at the best validation recovery; stop after --patience
            # evaluations without a new best (0: train the whole budget)
            best_metric="eval/raw/validation/recovery",
            patience=args.patience,
        ),
        eval=replace(EvalConfig(), every_epochs=every, weights=("raw",)),
    )
    if not args.set:
        return cfg
    tree = config_to_dict(cfg)
    for text in args.set:  # e.g. model.hidden=16 for a CPU dry run
        keys, value = parse_override(text)
        node = tree
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return config_from_dict(ProteinConfig, tree)


def time_steps(cfg: ProteinConfig, data, n: int) -> tuple[float, int]:
    task = ProteinTask(cfg, data)
    trainer = Trainer(replace(cfg.train, run_dir=cfg.train.run_dir + "_calib", resume=False), task)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for step in range(3):  # warm-up (allocator, cuBLAS handles)
        trainer.train_step(task.batch(step, 0, 1, trainer.device))
    sync()
    t0 = time.perf_counter()
    for step in range(3, 3 + n):
        trainer.train_step(task.batch(step, 0, 1, trainer.device))
    sync()
    per_step = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for split in cfg.eval.splits:
        evaluate_model(
            trainer.model.denoiser,
            data[split],
            cfg.eval.sampler,
            1,
            cfg.eval.num_tau,
            cfg.eval.max_tokens,
            trainer.device,
        )
    sync()
    per_eval = time.perf_counter() - t0
    return per_step, per_eval, task.steps_per_epoch


def cmd_plan(args: argparse.Namespace) -> None:
    probe = configure(reed(), args, "reed", 1, 1)
    data = load_data(probe.data)
    t_reed, t_eval, spe = time_steps(probe, data, args.calib_steps)
    t_base, _, _ = time_steps(configure(baseline(), args, "baseline", 1, 1), data, args.calib_steps)
    n_evals, n_seeds = args.evals, len(args.seeds)
    # every run side by side on one GPU: assume their steps serialise (conservative)
    per_epoch = (t_reed + t_base) * spe * n_seeds
    epochs = int((args.seconds - 2 * n_seeds * n_evals * t_eval) / per_epoch)
    epochs = max(args.min_epochs, min(args.max_epochs, epochs))
    every = max(1, epochs // n_evals)
    plan = {
        "seconds_per_step": {"reed": t_reed, "baseline": t_base},
        "seconds_per_eval": t_eval,
        "steps_per_epoch": spe,
        "epochs": epochs,
        "eval_every_epochs": every,
        "seeds": args.seeds,
        "targets": "stored" if args.stores else "online",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name, base in (("baseline", baseline()), ("reed", reed())):
            run = f"{name}-s{seed}"
            save_config(configure(base, args, run, epochs, every, seed), out / f"{run}.yaml")
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    print(json.dumps(plan, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stores")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--weights", default="v_48_020")
    p = sub.add_parser("plan")
    p.add_argument("--data", required=True)
    p.add_argument("--stores", default="", help="folder of the `stores` step (default: targets online)")
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default="runs/protein")
    p.add_argument("--seconds", type=float, default=380.0)
    p.add_argument("--calib-steps", type=int, default=10)
    p.add_argument("--evals", type=int, default=30, help="evaluations per run")
    p.add_argument("--min-epochs", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--max-tokens", type=int, default=3000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ckpt-every", type=int, default=1000, help="steps between checkpoints (runs resume)")
    p.add_argument("--patience", type=int, default=0, help="evaluations without a new best, then stop")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override applied to both runs (e.g. model.hidden=16 for a dry run)",
    )
    args = parser.parse_args()
    {"stores": cmd_stores, "plan": cmd_plan}[args.cmd](args)


if __name__ == "__main__":
    main()
