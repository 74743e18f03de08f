"""Throughput of one REED training step for SiT on SD-VAE-shaped latents (one GPU).

    python tools/bench_image.py                          # SiT-XL/2, batch 64, 32x32x4, 2 targets
    python tools/bench_image.py --arch SiT-B/2 --no-compile
    python tools/bench_image.py --tiny --device cpu --steps 3 --warmup 1   # CPU smoke test
    python tools/bench_image.py --kernels fused-fa4 --residual-dtype autocast --fused-update on \
        --param-dtype bfloat16 --cuda-graph --compile-regions 'denoiser.blocks.*' aligner   # the fastest

The step is the real one: ``ImageTask.batch`` + ``Trainer.train_step`` (bf16 autocast,
``torch.compile``, fused AdamW, foreach EMA, grad clipping, no host sync inside the step), with two
alignment targets streamed from reed-core feature stores held in GPU memory: DINOv2-B-shaped patch
tokens (256 x 768, block 8, token-wise) and a caption embedding (384-d, block 16, mean-pooled).
Latents, labels and target features are random (throughput does not depend on their values).

Prints images/s, peak memory and the achieved TFLOP/s of the transformer blocks' matmuls
(QKV, attention scores and values, output projection, MLP; forward x3 for forward + backward).
The model's speed is ``--kernels`` (``model.kernels``: the plain SiT, or FusedSiT through
reed-kernels) and ``--residual-dtype``; the rest are the trainer's speed options.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reed_core.features import FeatureStoreWriter
from reed_core.float8 import FLOAT8_RECIPES
from reed_core.speed import FUSED_UPDATE, PARAM_DTYPES
from reed_core.train import Trainer
from reed_image.configs import DataConfig, EvalConfig, imagenet_reed
from reed_image.models import sit
from reed_image.models.sit import KERNELS, RESIDUAL_DTYPES, SiTConfig


def block_matmul_flops(depth: int, hidden: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs (2 per multiply-add) of the blocks' matmuls for one image."""
    D, N = hidden, tokens
    qkv, proj, mlp = 2 * N * D * 3 * D, 2 * N * D * D, 2 * 2 * N * D * int(mlp_ratio * D)
    attn = 2 * 2 * N * N * D  # Q K^T and A V
    adaln = 2 * D * 6 * D  # once per image, not per token
    return depth * (qkv + proj + mlp + attn + adaln)


def write_fixtures(root: Path, n: int, latent: int, channels: int, dims: dict[str, tuple[int, int]]):
    g = np.random.default_rng(0)
    ids = [f"img{i:06d}" for i in range(n)]
    moments = np.concatenate(
        [g.standard_normal((n, channels, latent, latent)), np.full((n, channels, latent, latent), 0.1)],
        axis=1,
    ).astype(np.float16)
    np.savez(
        root / "latents.npz",
        moments=moments,
        labels=g.integers(0, 1000, n),
        ids=np.array(ids),
        class_names=np.array([str(i) for i in range(1000)]),
        scaling_factor=np.float32(0.18215),
        vae=np.array("random"),
    )
    for name, (L, D) in dims.items():
        with FeatureStoreWriter(root / name, name, (D,), "float16", shard_size=n) as w:
            for i in ids:
                w.add(i, g.standard_normal((L, D), dtype=np.float32))


def profile_steps(trainer: Trainer, task: Any, device: torch.device, first: int, path: Path) -> None:
    """Kernel-level breakdown of 5 training steps (torch.profiler), sorted by GPU time, and their
    timeline (Chrome trace, gzipped, beside the table)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for step in range(first, first + 5):
            trainer.step = step
            trainer.train_step(task.batch(step, 0, 1, device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    averages = prof.key_averages()
    table = averages.table(sort_by=sort_by, row_limit=60, max_name_column_width=90)
    if device.type == "cuda":  # GPU kernels only (no runtime/launch rows), to compare with wall time
        kernels = sorted(
            (e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA),
            key=lambda e: -e.self_device_time_total,
        )
        kernel_us = sum(e.self_device_time_total for e in kernels if e.key != "Command Buffer Full")
        table += f"\nGPU kernel time per step: {kernel_us / 5 / 1000:.2f} ms\n"
        table += "\nGPU kernels, per step (ms, calls):\n" + "".join(
            f"{e.self_device_time_total / 5 / 1000:8.3f} {e.count / 5:6.1f}  {e.key[:150]}\n"
            for e in kernels[:120]
        )
    path.write_text(table)
    prof.export_chrome_trace(str(path.with_suffix(".trace.json.gz")))  # timeline: gaps between kernels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="SiT-XL/2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps (compilation)")
    p.add_argument("--examples", type=int, default=1024, help="size of the fixture data set")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (train.speed.compile_mode)")
    p.add_argument(
        "--compile-regions",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="compile only these submodules (train.speed.compile_regions), e.g. 'denoiser.blocks.*'",
    )
    p.add_argument(
        "--kernels",
        default="none",
        choices=KERNELS,
        help="model.kernels: none (the plain SiT), fused (FusedSiT: reed-kernels' fused adaLN chain, "
        "cuBLASLt MLP and Linears), fused-fa4 (and the packed FlashAttention-4 attention)",
    )
    p.add_argument("--fused-update", default="auto", choices=FUSED_UPDATE, help="clip+AdamW+EMA in one pass")
    p.add_argument(
        "--float8",
        default="off",
        choices=FLOAT8_RECIPES,
        help="FP8 matmuls for the blocks' linear layers (train.speed.float8, torchao)",
    )
    p.add_argument(
        "--param-dtype",
        choices=tuple(PARAM_DTYPES),
        default="float32",
        help="train.speed.param_dtype: bfloat16 keeps bf16 weights, float32 masters in the fused update",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="record the whole step (forward, backward, update) as one CUDA graph (train.speed.cuda_graph)",
    )
    p.add_argument(
        "--residual-dtype",
        default="float32",
        choices=RESIDUAL_DTYPES,
        help="the residual stream's dtype (model.residual_dtype): float32, or the autocast dtype (bf16)",
    )
    p.add_argument(
        "--cublaslt-plans",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --kernels: load cuBLASLt plans (algorithms) from FILE before the first step "
        "(reed_kernels.cublaslt_plans.load_plans; model.cublaslt_plans in training)",
    )
    p.add_argument(
        "--save-cublaslt-plans",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --kernels: after timing, write the cuBLASLt plans to FILE (JSON; --cublaslt-plans "
        "reads it)",
    )
    p.add_argument(
        "--inductor",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set torch._inductor.config.KEY (repeatable; VALUE is a Python literal)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny widths (CPU smoke test)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="after timing, profile 5 more steps and write the kernel table (by GPU time) here",
    )
    args = p.parse_args()
    if args.kernels == "none" and (args.cublaslt_plans or args.save_cublaslt_plans):
        p.error("--cublaslt-plans, --save-cublaslt-plans: the plain model runs no cuBLASLt GEMMs (--kernels)")
    cublaslt_plans = None
    if args.kernels != "none":
        from reed_kernels import cublaslt_plans
    device = torch.device(args.device)
    inductor = {}
    for item in args.inductor:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--inductor {item!r}: expected KEY=VALUE")
        inductor[key] = ast.literal_eval(value)
    if inductor:
        import torch._inductor.config as inductor_config

        for key, value in inductor.items():
            *parents, leaf = key.split(".")
            setattr(functools.reduce(getattr, parents, inductor_config), leaf, value)

    base = imagenet_reed()
    model = SiTConfig(
        arch=args.arch,
        input_size=32,
        in_channels=4,
        num_classes=1000,
        kernels=args.kernels,
        residual_dtype=args.residual_dtype,
    )
    if args.tiny:
        model = replace(model, depth=4, hidden_size=64, num_heads=4)
    depth = model.resolved()[0]
    vision_depth, caption_depth = (1, 2) if args.tiny else (8, 16)
    dims = {"vision": (256, 768), "caption": (1, 384)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fixtures(root, args.examples, 32, 4, dims)
        t = base.reed.targets
        targets = {
            "vision": replace(t["vision"], store=str(root / "vision"), location="device", depth=vision_depth),
            "caption": replace(
                t["caption"], store=str(root / "caption"), location="device", depth=caption_depth
            ),
        }
        cfg = replace(
            base,
            model=model,
            data=DataConfig(source="latents", path=str(root / "latents.npz"), on_device=True),
            reed=replace(base.reed, targets=targets),
            train=replace(
                base.train,
                run_dir=str(root / "run"),
                batch_size=args.batch,
                speed=replace(
                    base.train.speed,
                    compile=not args.no_compile,
                    compile_mode=args.compile_mode,
                    compile_regions=tuple(args.compile_regions),
                    fused_update=args.fused_update,
                    float8=args.float8,
                    param_dtype=args.param_dtype,
                    cuda_graph=args.cuda_graph,
                ),
                device=args.device,
                steps=10**9,
                progress_bar=False,
                tensorboard=False,
            ),
            eval=EvalConfig(metrics=False),
        )
        from reed_image.task import ImageTask

        task = ImageTask(cfg)
        trainer = Trainer(cfg.train, task, experiment_config=cfg)
        n_params = sum(p.numel() for p in task.denoiser.parameters())
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        plans_loaded = cublaslt_plans.load_plans(args.cublaslt_plans) if args.cublaslt_plans else 0
        t0 = time.perf_counter()
        for step in range(args.warmup):
            trainer.step = step
            out = trainer.train_step(task.batch(step, 0, 1, device))
            sync()
            print(f"warm-up step {step}: {time.perf_counter() - t0:.1f} s", flush=True)
        compile_s = time.perf_counter() - t0
        first = args.warmup
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for step in range(first, first + args.steps):
            trainer.step = step
            out = trainer.train_step(task.batch(step, 0, 1, device))
        sync()
        elapsed = time.perf_counter() - t0
        loss = float(out.loss.detach())
        if args.profile is not None:
            profile_steps(trainer, task, device, first + args.steps, args.profile)
        if args.save_cublaslt_plans:
            source = f"loaded from {args.cublaslt_plans}" if args.cublaslt_plans else "autotuned per plan"
            cublaslt_plans.save_plans(
                args.save_cublaslt_plans, notes={"plans": source, "tool": "bench_image.py"}
            )

    images_per_s = args.steps * args.batch / elapsed
    flops = 3 * block_matmul_flops(depth, task.denoiser.hidden_size, task.denoiser.num_tokens)
    result = {
        "arch": args.arch + (" (tiny)" if args.tiny else ""),
        "params_M": round(n_params / 1e6, 1),
        "batch": args.batch,
        "compile": False if args.no_compile else args.compile_mode,
        "compile_regions": trainer.compiled_regions[:2] + ["..."] * (len(trainer.compiled_regions) > 2),
        "fused_update": trainer.fused_update is not None,
        "kernels": args.kernels,
        "model_class": type(task.denoiser).__name__,
        "residual_dtype": args.residual_dtype,
        "cublaslt_plans": (
            f"loaded {plans_loaded} from {args.cublaslt_plans}"
            if args.cublaslt_plans
            else "autotuned per plan"
            if args.kernels != "none"
            else None
        ),
        "float8": args.float8,
        "float8_layers": len(trainer.float8_layers),
        "param_dtype": args.param_dtype,
        "cuda_graph": args.cuda_graph,
        "inductor": inductor,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        # which sources ran (relative to the working directory): an A/B of two checkouts shows here
        "sit_source": os.path.relpath(sit.__file__),
        "kernels_source": os.path.relpath(cublaslt_plans.__file__) if cublaslt_plans else None,
        "images_per_s": round(images_per_s, 1),
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "block_matmul_TFLOP_per_s": round(flops * images_per_s / 1e12, 1),
        "warmup_s": round(compile_s, 1),
        "final_loss": round(loss, 4),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
