"""Where the time of one image training step goes: the top device ops of a few steps under
``torch.profiler``, per preset, built exactly as ``python -m reed_image.train`` builds its run
(preset -> ``key=value`` overrides -> ``ImageTask`` and reed-core's ``Trainer``).

    # GPU, repo root, after experiments/image/step_ab.sh has built the vision store in WORK
    python experiments/image/profile_step.py fmnist-vanilla fmnist-repa \\
        data.path=.carry/image/fashion-mnist reed.targets.vision.store=/tmp/reed-step-ab/vision \\
        reed.targets.vision.checkpoint=.carry/image/efficientnet-lite0.pth --out $OUT/profile.json

Each preset: ``--warmup`` steps, then ``--steps`` steps timed end to end (one synchronisation),
then ``--profile-steps`` steps under the profiler. Overrides name only what exists in the preset's
config, so a vanilla preset accepts the vision target's keys (the target is listed, switched off).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

import torch

from reed_core.profiling import format_ops, top_ops


def build(preset: str, overrides: list[str], run_dir: str):
    from reed_core.config import load_config
    from reed_core.train import Trainer
    from reed_image.configs import PRESETS, ImageConfig
    from reed_image.task import ImageTask

    cfg = load_config(ImageConfig, PRESETS, preset, None, overrides)
    cfg = replace(cfg, train=replace(cfg.train, run_dir=run_dir, progress_bar=False, tensorboard=False))
    task = ImageTask(cfg)
    return Trainer(cfg.train, task, experiment_config=cfg)


def run_steps(trainer, n: int) -> float:
    """Milliseconds per step over ``n`` steps as ``Trainer.fit`` runs them (batch, then step)."""
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        batch = trainer.task.batch(trainer.step, 0, 1, trainer.device)
        trainer.train_step(batch)
        trainer.step += 1
    if cuda:
        torch.cuda.synchronize()
    return 1000.0 * (time.perf_counter() - t0) / max(n, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("presets", nargs="+", help="presets, then key=value overrides for all of them")
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    presets = [w for w in args.presets if "=" not in w]
    overrides = [w for w in args.presets if "=" in w]
    report = {}
    for preset in presets:
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = build(preset, overrides, run_dir)
            cuda = trainer.device.type == "cuda"
            run_steps(trainer, args.warmup)
            ms = run_steps(trainer, args.steps)
            activities = [torch.profiler.ProfilerActivity.CPU]
            if cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as prof:
                run_steps(trainer, args.profile_steps)
            ops = top_ops(prof, args.profile_steps, cuda, k=15)
            mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            report[preset] = {"ms_per_step": ms, "max_memory_gib": mem, "top_ops": ops}
            print(f"== {preset}: {ms:.1f} ms/step, peak memory {mem} GiB", flush=True)
            print(format_ops(ops, cuda), flush=True)
            del trainer
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
