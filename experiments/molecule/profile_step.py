"""Where the time of one molecule training step goes, for one or more model variants.

Each variant is built exactly as ``python -m reed_molecule.train`` builds its run (preset ->
``--config`` file -> ``key=value`` overrides, then ``MoleculeTask`` and reed-core's ``Trainer``
with its autocast, ``train.speed`` options, optimiser and EMA), then:

1. ``--warmup`` steps, not timed (allocator, cuDNN / compile warm-up);
2. ``--steps`` steps timed end to end as ``Trainer.fit`` runs them (host batch assembly, then the
   asynchronous device step; one synchronisation at the end): ``ms_per_step``; the same number
   of steps on one pre-built batch: ``device_ms_per_step`` (no data work);
3. ``--breakdown-steps`` steps with a synchronisation between phases: host batch assembly (OT
   alignment on the CPU + copy), the loss call split into the denoiser's forward (by module: each
   child of the repeated layers, ``layers.*.<name>``, and each top-level module; the rest of the
   layer and network bodies separately), the objective around it (corruption, losses, alignment),
   backward, and the update (clip + AdamW + EMA). Module times are CUDA events recorded by
   forward hooks, so they include launch gaps where the GPU waits for the host;
4. ``--profile-steps`` steps under ``torch.profiler``: the top 20 ops by self device time
   (self CPU time on a CPU).

Alignment targets whose feature store is not on this machine are replaced by random vectors of
the target's width (flagged ``random_targets`` in the output): the speed is the same, and no
RDKit or fcd-torch is needed. Nothing here imports RDKit.

    # CPU smoke test on the 64 packaged molecules
    python experiments/molecule/profile_step.py --device cpu --variants tiny tiny_semla \\
        --warmup 1 --steps 3 --breakdown-steps 2 --profile-steps 1 --out /tmp/profile.json

    # GPU: the current model (qm9_budget_baseline) against the Semla model (qm9_semla)
    PYTHONPATH=packages/reed-core/src:packages/reed-molecule/src \\
    python experiments/molecule/profile_step.py --device cuda --variants current semla \\
        data.path=.carry/molecule/qm9.npz --out $OUT/profile.json

    # a variant with its own overrides: --variant LABEL PRESET [key=value ...]
    ... --variant semla-compiled qm9_semla train.speed.compile=true

``current`` and ``semla`` name the presets ``qm9_budget_baseline`` and ``qm9_semla``; any other
name is a preset. ``key=value`` words apply to every variant (before its own), except those
after a ``--variant``, which are that variant's own.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from reed_core.profiling import format_ops, top_ops

ALIASES = {"current": "qm9_budget_baseline", "semla": "qm9_semla"}


# -- timing ------------------------------------------------------------------------------------
class Clock:
    """Marks on the device's timeline: CUDA events on a GPU, ``perf_counter`` on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start, end) -> float:
        """Milliseconds between two marks (after :meth:`sync` on a GPU)."""
        if self.cuda:
            return start.elapsed_time(end)
        return 1000.0 * (end - start)


def module_groups(denoiser: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """Modules to time, grouped: ``layers.*.<child>`` for the children of the repeated layers,
    ``layers.*`` for the layers themselves, ``<name>`` for the other top-level modules."""
    groups: dict[str, list[tuple[str, nn.Module]]] = defaultdict(list)
    for name, module in denoiser.named_modules():
        parts = name.split(".")
        if parts == [""]:
            continue
        if parts[0] == "layers" and len(parts) == 2:
            groups["layers.*"].append((name, module))
        elif parts[0] == "layers" and len(parts) == 3:
            groups[f"layers.*.{parts[2]} ({type(module).__name__})"].append((name, module))
        elif len(parts) == 1 and parts[0] != "layers":
            groups[f"{name} ({type(module).__name__})"].append((name, module))
    return dict(groups)


class ForwardTimer:
    """Forward pre/post hooks that mark the start and end of every call of the grouped modules;
    :meth:`collect` turns one step's marks into milliseconds per group."""

    def __init__(self, clock: Clock, model: nn.Module, denoiser: nn.Module):
        self.clock = clock
        self.marks: dict[str, list] = defaultdict(list)
        self.handles = []
        targets = {"denoiser (whole forward)": [("", denoiser)]}
        targets.update(module_groups(denoiser))
        aligner = getattr(model, "aligner", None)
        if aligner is not None:
            targets["aligner (projectors, pooling, cosine)"] = [("aligner", aligner)]
        for group, modules in targets.items():
            for _, module in modules:
                self.handles.append(module.register_forward_pre_hook(self._hook(group, "start")))
                self.handles.append(module.register_forward_hook(self._hook(group, "end")))

    def _hook(self, group: str, kind: str):
        def hook(*_):
            self.marks[group].append((kind, self.clock.mark()))

        return hook

    def collect(self) -> dict[str, float]:
        out = {}
        for group, marks in self.marks.items():
            starts = [m for k, m in marks if k == "start"]
            ends = [m for k, m in marks if k == "end"]
            out[group] = sum(self.clock.ms(s, e) for s, e in zip(starts, ends))
        self.marks.clear()
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# -- building a variant exactly as the train entry point does ------------------------------------
def load_variant_config(preset: str, overrides: list[str], device: str, run_dir: str):
    from reed_core.config import load_config
    from reed_molecule.configs import PRESETS, MoleculeConfig

    cfg = load_config(MoleculeConfig, PRESETS, preset, None, overrides)
    train = replace(cfg.train, device=device, run_dir=run_dir, progress_bar=False, tensorboard=False)
    return replace(cfg, train=train)


def with_available_targets(cfg, arrays, scratch: Path) -> tuple[object, list[str]]:
    """``cfg`` with every enabled target whose store is missing pointed at a store of random
    vectors (the target's width, 512 when it reads the width from its store) for the training
    split; returns the names replaced."""
    from reed_core.features import FeatureStoreWriter

    targets, replaced = dict(cfg.reed.targets), []
    for name, t in cfg.reed.enabled.items():
        if t.store and (Path(t.store) / "meta.json").is_file():
            continue
        dim = t.dim or 512
        root = scratch / f"random_{name}_{dim}"
        if not (root / "meta.json").is_file():
            rng = np.random.default_rng(0)
            with FeatureStoreWriter(root, name, shape=(dim,), overwrite=True) as writer:
                for mol_id in arrays.mol_id[arrays.split(cfg.data.train_split)]:
                    writer.add(str(int(mol_id)), rng.standard_normal(dim).astype(np.float32))
        targets[name] = replace(t, store=str(root), dim=dim)
        replaced.append(name)
    return replace(cfg, reed=replace(cfg.reed, targets=targets)), replaced


def update_step(trainer) -> None:
    """The update of ``Trainer._device_step`` after backward: fused, or clip + AdamW + EMA."""
    if trainer.fused_update is not None:
        trainer.fused_update.apply()
    else:
        if trainer.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainer._model_params, trainer.cfg.grad_clip)
        trainer.optimizer.step()
        with torch.no_grad():
            rate = 1.0 - trainer.ema_decay_at(trainer.step)
            torch._foreach_lerp_(trainer._ema_params, trainer._model_params, rate)
    trainer.optimizer.zero_grad(set_to_none=True)


def set_rates(trainer) -> None:
    lr, decay = trainer.lr_at(trainer.step), trainer.ema_decay_at(trainer.step)
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    if trainer.fused_update is not None:
        trainer.fused_update.set_rates(lr, decay)


def profile_variant(label: str, preset: str, overrides: list[str], args, arrays_cache, scratch: Path) -> dict:
    from reed_core.train import Trainer
    from reed_molecule.data.arrays import MoleculeArrays
    from reed_molecule.fixtures import resolve_data_path
    from reed_molecule.task import MoleculeTask

    run_dir = scratch / f"run_{label}"
    cfg = load_variant_config(preset, overrides, args.device, str(run_dir))
    data_path = str(resolve_data_path(cfg.data.path))
    if data_path not in arrays_cache:
        arrays_cache[data_path] = MoleculeArrays.load(data_path)
    arrays = arrays_cache[data_path]
    cfg, random_targets = with_available_targets(cfg, arrays, scratch)
    task = MoleculeTask(cfg, arrays)
    trainer = Trainer(cfg.train, task, experiment_config=cfg)
    device, clock = trainer.device, Clock(trainer.device)
    denoiser = trainer.model.denoiser
    n_params = sum(p.numel() for p in denoiser.parameters())
    n_aligner = sum(p.numel() for p in trainer.model.parameters()) - n_params
    trainer.model.train()

    def one_step():
        batch = task.batch(trainer.step, 0, 1, device)
        trainer.train_step(batch)
        trainer.step += 1
        return batch

    for _ in range(args.warmup):
        one_step()
    clock.sync()

    # 2. end to end, as Trainer.fit runs it
    atoms, slots, host_ms = 0, 0, 0.0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tb = time.perf_counter()
        batch = task.batch(trainer.step, 0, 1, device)
        host_ms += 1000 * (time.perf_counter() - tb)
        trainer.train_step(batch)
        trainer.step += 1
        atoms += int(batch.mask.sum())
        slots += batch.mask.numel()
    clock.sync()
    wall = time.perf_counter() - t0
    ms_per_step = 1000 * wall / args.steps
    # the same number of steps on one batch: the device's share without data work
    batch = task.batch(trainer.step, 0, 1, device)
    clock.sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(batch)
        trainer.step += 1
    clock.sync()
    device_ms = 1000 * (time.perf_counter() - t0) / args.steps

    # 3. phases with synchronisation, and the forward by module
    compiled = cfg.train.speed.compile or trainer.graphed_step is not None
    phases: dict[str, float] = defaultdict(float)
    modules: dict[str, float] = defaultdict(float)
    forward_calls = 0
    if args.breakdown_steps > 0:
        timer = None if compiled else ForwardTimer(clock, trainer.model, denoiser)
        autocast = trainer.autocast_dtype
        for _ in range(args.breakdown_steps):
            set_rates(trainer)
            clock.sync()
            t = time.perf_counter()
            batch = task.batch(trainer.step, 0, 1, device)
            clock.sync()
            phases["batch assembly (host: OT alignment, padding, copy)"] += 1000 * (time.perf_counter() - t)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                out = task.loss(trainer.train_model, batch, trainer.step)
            clock.sync()
            phases["loss call (forward + objective)"] += 1000 * (time.perf_counter() - t)
            t = time.perf_counter()
            out.loss.backward()
            clock.sync()
            phases["backward"] += 1000 * (time.perf_counter() - t)
            t = time.perf_counter()
            update_step(trainer)
            clock.sync()
            phases["update (clip + AdamW + EMA)"] += 1000 * (time.perf_counter() - t)
            trainer.step += 1
            if timer is not None:
                forward_calls += len(timer.marks.get("denoiser (whole forward)", [])) // 2
                for group, ms in timer.collect().items():
                    modules[group] += ms
        if timer is not None:
            timer.remove()
        n = args.breakdown_steps
        phases = {k: v / n for k, v in phases.items()}
        modules = {k: v / n for k, v in modules.items()}
        if modules:
            fwd = modules.get("denoiser (whole forward)", 0.0)
            layer_children = sum(v for k, v in modules.items() if k.startswith("layers.*."))
            top = sum(v for k, v in modules.items() if not k.startswith(("layers", "denoiser", "aligner")))
            layers = modules.get("layers.*", 0.0)
            modules["layers.* (rest of the layer bodies)"] = layers - layer_children
            modules["denoiser (rest of the body: graph, features)"] = fwd - layers - top
            loss_call = phases["loss call (forward + objective)"]
            modules["objective around the forward (corrupt, losses, alignment)"] = (
                loss_call - fwd - modules.get("aligner (projectors, pooling, cosine)", 0.0)
            )

    # 4. torch.profiler
    ops: list[dict] = []
    if args.profile_steps > 0:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(args.profile_steps):
                one_step()
            clock.sync()
        ops = top_ops(prof, args.profile_steps, device.type == "cuda")

    result = {
        "preset": preset,
        "overrides": overrides,
        "arch": cfg.model.arch,
        "parameters": n_params,
        "aligner_parameters": n_aligner,
        "random_targets": random_targets,
        "batch_size": cfg.train.batch_size,
        "precision": "bf16 autocast" if trainer.autocast_dtype is not None else "fp32",
        "compile": cfg.train.speed.compile,
        "self_condition": cfg.model.self_condition,
        "ms_per_step": ms_per_step,
        "device_ms_per_step": device_ms,
        "host_batch_ms_per_step": host_ms / args.steps,
        "molecules_per_s": cfg.train.batch_size / (ms_per_step / 1000),
        "atoms_per_s": atoms / wall,
        "padding_fraction": 1.0 - atoms / max(slots, 1),
        "phases_ms": dict(phases),
        "forward_calls_per_step": forward_calls / max(args.breakdown_steps, 1),
        "forward_by_module_ms": dict(sorted(modules.items(), key=lambda kv: -kv[1])),
        "top_ops": ops,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return result


def print_variant(label: str, r: dict, cuda: bool) -> None:
    print(f"\n== {label}: preset {r['preset']} {' '.join(r['overrides'])}".rstrip())
    print(
        f"   arch {r['arch']}, {r['parameters'] / 1e6:.2f} M parameters "
        f"(+{r['aligner_parameters'] / 1e6:.2f} M aligner), batch {r['batch_size']}, {r['precision']}, "
        f"compile {r['compile']}, "
        f"self-conditioning {r['self_condition']}"
        + (f", random targets for {r['random_targets']}" if r["random_targets"] else "")
    )
    print(
        f"   {r['ms_per_step']:.2f} ms/step end to end ({r['molecules_per_s']:.0f} molecules/s, "
        f"{r['atoms_per_s']:.0f} atoms/s, padding {100 * r['padding_fraction']:.0f}%); "
        f"{r['device_ms_per_step']:.2f} ms/step on a fixed batch; "
        f"host batch {r['host_batch_ms_per_step']:.2f} ms"
        + (f"; peak memory {r['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r else "")
    )
    if r["phases_ms"]:
        total = sum(r["phases_ms"].values())
        print(f"   phases (synchronised, {total:.2f} ms/step):")
        for k, v in r["phases_ms"].items():
            print(f"     {v:9.2f} ms  {100 * v / total:5.1f}%  {k}")
    if r["forward_by_module_ms"]:
        print(f"   loss call by module ({r['forward_calls_per_step']:.1f} denoiser forwards/step):")
        for k, v in r["forward_by_module_ms"].items():
            print(f"     {v:9.2f} ms  {k}")
    if r["top_ops"]:
        print(f"   top ops by self {'CUDA' if cuda else 'CPU'} time per step:")
        print(format_ops(r["top_ops"], cuda, indent="     "))
    sys.stdout.flush()  # a variant's table is out before the next one is built


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--variants", nargs="+", default=[], metavar="NAME", help="presets or aliases (current, semla)"
    )
    p.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar="LABEL PRESET [KEY=VALUE]",
        help="a labelled variant with its own overrides (repeatable)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30, help="timed steps (end to end, and on a fixed batch)")
    p.add_argument("--breakdown-steps", type=int, default=5)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every variant")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_intermixed_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # --variants takes the key=value words that follow it too: those are overrides for every variant
    args.overrides += [w for w in args.variants if "=" in w]
    specs = [(name, ALIASES.get(name, name), []) for name in args.variants if "=" not in name]
    for v in args.variant:
        if len(v) < 2:
            raise SystemExit("--variant: expected LABEL PRESET [KEY=VALUE ...]")
        specs.append((v[0], ALIASES.get(v[1], v[1]), list(v[2:])))
    if not specs:
        specs = [("current", ALIASES["current"], [])]
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = {}
    arrays_cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="reed_profile_") as tmp:
        for label, preset, own in specs:
            overrides = [*args.overrides, *own]
            results[label] = profile_variant(label, preset, overrides, args, arrays_cache, Path(tmp))
            print_variant(label, results[label], args.device.startswith("cuda"))
            gc.collect()  # the variant's trainer, before the next one is built
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "steps": args.steps,
        "breakdown_steps": args.breakdown_steps,
        "profile_steps": args.profile_steps,
        "variants": results,
    }
    if len(results) > 1:
        base_label = next(iter(results))
        base = results[base_label]["ms_per_step"]
        print(f"\n== ms/step relative to {base_label}:")
        for label, r in results.items():
            print(
                f"   {label:20s} {r['ms_per_step']:9.2f} ms/step  x{r['ms_per_step'] / base:.2f}  "
                f"{r['molecules_per_s']:8.0f} molecules/s"
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=_json_default))
        print(f"\nwrote {args.out}")
    return report


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
