"""Throughput of one REED training step for SiT on SD-VAE-shaped latents (one GPU).

    python tools/bench_image.py                          # SiT-XL/2, batch 64, 32x32x4, 2 targets
    python tools/bench_image.py --arch SiT-B/2 --no-compile
    python tools/bench_image.py --tiny --device cpu --steps 3 --warmup 1   # CPU smoke test

The step is the real one: ``ImageTask.batch`` + ``Trainer.train_step`` (bf16 autocast,
``torch.compile``, fused AdamW, foreach EMA, grad clipping, no host sync inside the step), with two
alignment targets streamed from reed-core feature stores held in GPU memory: DINOv2-B-shaped patch
tokens (256 x 768, block 8, token-wise) and a caption embedding (384-d, block 16, mean-pooled).
Latents, labels and target features are random (throughput does not depend on their values).

Prints images/s, peak memory and the achieved TFLOP/s of the transformer blocks' matmuls
(QKV, attention scores and values, output projection, MLP; forward x3 for forward + backward).
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
from reed_core.train import FUSED_UPDATE, PARAM_DTYPES, Trainer
from reed_image.configs import DataConfig, EvalConfig, imagenet_reed
from reed_image.models import cublaslt, cublaslt_plans, flash_attention, fused_adaln, fused_mlp, sit
from reed_image.models.sit import ATTENTION_CHOICES, SiTConfig


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
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (train.compile_mode)")
    p.add_argument(
        "--compile-regions",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="compile only these submodules (train.compile_regions), e.g. 'denoiser.blocks.*' 'aligner'",
    )
    p.add_argument("--attention", default="auto", choices=list(ATTENTION_CHOICES), help="SDPA kernel, or fa4")
    p.add_argument("--fused-update", default="auto", choices=FUSED_UPDATE, help="clip+AdamW+EMA in one pass")
    p.add_argument(
        "--fused-adaln",
        action="store_true",
        help="residual add + LayerNorm + modulate as one Triton kernel each way (model.fused_adaln)",
    )
    p.add_argument(
        "--fused-gelu",
        action="store_true",
        help="MLP bias add + GELU (and its bias gradient) as one Triton kernel each way (model.fused_gelu)",
    )
    p.add_argument(
        "--fused-mlp",
        action="store_true",
        help="the MLP's bias + GELU and its backward in cuBLASLt GEMM epilogues (model.fused_mlp)",
    )
    p.add_argument(
        "--float8",
        default="off",
        choices=FLOAT8_RECIPES,
        help="FP8 matmuls for the blocks' linear layers (train.float8, torchao)",
    )
    p.add_argument(
        "--param-dtype",
        choices=tuple(PARAM_DTYPES),
        default="float32",
        help="train.param_dtype: bfloat16 keeps bf16 weights, float32 masters in the fused update",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="record the whole step (forward, backward, update) as one CUDA graph (train.cuda_graph)",
    )
    p.add_argument(
        "--ema-overlap",
        action="store_true",
        help="the EMA step one step late, on a side stream beside forward/backward (train.ema_overlap)",
    )
    p.add_argument(
        "--fc1-bias-grad",
        default=None,
        choices=("epilogue", "gemv"),
        help="fused_mlp: fc1's bias gradient by a gemv or in the dW1 GEMM's epilogue (default: "
        "fused_mlp.FC1_BIAS_GRAD)",
    )
    p.add_argument(
        "--cublaslt-autotune",
        default=None,
        choices=cublaslt.AUTOTUNE_METHODS,
        help="how cuBLASLt plans pick their algorithm: timed inside a CUDA graph, with workspace-free "
        "candidates too, or timed on the stream (default: cublaslt.AUTOTUNE)",
    )
    p.add_argument(
        "--cublaslt-candidates",
        type=int,
        default=None,
        metavar="N",
        help="how many of the heuristic's algorithms (per query) cuBLASLt plans time before picking "
        "one (default: cublaslt.AUTOTUNE_CANDIDATES)",
    )
    p.add_argument(
        "--cublaslt-memset-penalty",
        type=float,
        default=None,
        metavar="US",
        help="graph autotuning: microseconds added for a candidate that needs a workspace memset "
        "(default: cublaslt.MEMSET_PENALTY_US)",
    )
    p.add_argument(
        "--residual-dtype",
        default="float32",
        choices=sit.RESIDUAL_DTYPES,
        help="the residual stream's dtype (model.residual_dtype): float32, or the autocast dtype (bf16)",
    )
    p.add_argument(
        "--cublaslt-plans",
        type=Path,
        default=None,
        metavar="FILE",
        help="load cuBLASLt plans (algorithms) from FILE before the first step (cublaslt_plans.load_plans)",
    )
    p.add_argument(
        "--save-cublaslt-plans",
        type=Path,
        default=None,
        metavar="FILE",
        help="after timing, write the cuBLASLt plans to FILE (JSON; --cublaslt-plans reads it)",
    )
    p.add_argument(
        "--adaln-partial-sums",
        default=None,
        choices=("kernel", "torch"),
        help="fused_adaln: finish the backward's partial sums in one Triton kernel or by a torch "
        "sum each (default: fused_adaln.FINISH_PARTIAL_SUMS)",
    )
    p.add_argument(
        "--no-deferred-biases",
        action="store_true",
        help="keep proj's and fc2's biases in their GEMMs (sit.DEFER_BRANCH_BIASES off; fused_adaln)",
    )
    p.add_argument(
        "--torch-attention-linears",
        action="store_true",
        help="with --fused-mlp: the attention's qkv and proj Linears through PyTorch, not the "
        "autotuned cuBLASLt GEMMs (sit.CUBLASLT_ATTENTION_LINEARS off)",
    )
    p.add_argument(
        "--torch-adaln-linears",
        action="store_true",
        help="with --fused-mlp --fused-adaln: the adaLN modulation Linears through PyTorch, not the "
        "autotuned cuBLASLt GEMMs (sit.CUBLASLT_ADALN_LINEARS off)",
    )
    p.add_argument(
        "--conv-patch-embed",
        action="store_true",
        help="the patch embedding as SiT's Conv2d, not one Linear on the flattened patches "
        "(sit.PATCH_EMBED = conv)",
    )
    p.add_argument(
        "--no-fold-qkv-bias",
        action="store_true",
        help="attention fa4: the qkv bias gradient by autograd's reduction, not from the attention "
        "backward (sit.FOLD_QKV_BIAS_GRAD off)",
    )
    p.add_argument(
        "--fa4-prepost",
        default=None,
        choices=("triton", "fa4"),
        help="attention fa4: the backward's pre/postprocess (default: flash_attention.PREPOST)",
    )
    p.add_argument(
        "--fa4-backward-config",
        default=None,
        metavar="JSON",
        help="attention fa4: changes to FlashAttention-4's backward configuration, a JSON dict of "
        "BwdConfig fields (flash_attention.BACKWARD_CONFIG)",
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
    sit.DEFER_BRANCH_BIASES = not args.no_deferred_biases
    sit.FOLD_QKV_BIAS_GRAD = not args.no_fold_qkv_bias
    sit.CUBLASLT_ATTENTION_LINEARS = not args.torch_attention_linears
    sit.CUBLASLT_ADALN_LINEARS = not args.torch_adaln_linears
    sit.PATCH_EMBED = "conv" if args.conv_patch_embed else sit.PATCH_EMBED
    flash_attention.PREPOST = args.fa4_prepost or flash_attention.PREPOST
    if args.fa4_backward_config:
        flash_attention.BACKWARD_CONFIG = json.loads(args.fa4_backward_config)
    fused_mlp.FC1_BIAS_GRAD = args.fc1_bias_grad or fused_mlp.FC1_BIAS_GRAD
    cublaslt.AUTOTUNE = args.cublaslt_autotune or cublaslt.AUTOTUNE
    if args.cublaslt_candidates is not None:
        cublaslt.AUTOTUNE_CANDIDATES = args.cublaslt_candidates
    if args.cublaslt_memset_penalty is not None:
        cublaslt.MEMSET_PENALTY_US = args.cublaslt_memset_penalty
    fused_adaln.FINISH_PARTIAL_SUMS = args.adaln_partial_sums or fused_adaln.FINISH_PARTIAL_SUMS
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
        attention=args.attention,
        fused_adaln=args.fused_adaln,
        fused_gelu=args.fused_gelu,
        fused_mlp=args.fused_mlp,
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
        t = base.objective.targets
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
            objective=replace(base.objective, targets=targets),
            train=replace(
                base.train,
                run_dir=str(root / "run"),
                batch_size=args.batch,
                compile=not args.no_compile,
                compile_mode=args.compile_mode,
                compile_regions=tuple(args.compile_regions),
                fused_update=args.fused_update,
                float8=args.float8,
                param_dtype=args.param_dtype,
                cuda_graph=args.cuda_graph,
                ema_overlap=args.ema_overlap,
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
        "attention": args.attention,
        "fused_update": trainer.fused_update is not None,
        "fused_adaln": args.fused_adaln,
        "fused_gelu": args.fused_gelu,
        "fused_mlp": args.fused_mlp,
        "deferred_biases": sit.DEFER_BRANCH_BIASES,
        "fold_qkv_bias_grad": sit.FOLD_QKV_BIAS_GRAD,
        "cublaslt_attention_linears": sit.CUBLASLT_ATTENTION_LINEARS and args.fused_mlp,
        "cublaslt_adaln_linears": sit.CUBLASLT_ADALN_LINEARS and args.fused_mlp and args.fused_adaln,
        "patch_embed": sit.PATCH_EMBED,
        "residual_dtype": args.residual_dtype,
        "fa4_prepost": flash_attention.PREPOST,
        "fa4_backward_config": flash_attention.BACKWARD_CONFIG,
        "fc1_bias_grad": fused_mlp.FC1_BIAS_GRAD,
        "cublaslt_autotune": cublaslt.AUTOTUNE,
        "cublaslt_memset_penalty_us": cublaslt.MEMSET_PENALTY_US,
        "cublaslt_candidates": cublaslt.AUTOTUNE_CANDIDATES,
        "cublaslt_plans": (
            f"loaded {plans_loaded} from {args.cublaslt_plans}"
            if args.cublaslt_plans
            else "autotuned per plan"
        ),
        "adaln_partial_sums": fused_adaln.FINISH_PARTIAL_SUMS,
        "ema_overlap": args.ema_overlap,
        "float8": args.float8,
        "float8_layers": len(trainer.float8_layers),
        "param_dtype": args.param_dtype,
        "cuda_graph": args.cuda_graph,
        "inductor": inductor,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        # which sources ran (relative to the working directory): an A/B of two checkouts shows here
        "sit_source": os.path.relpath(sit.__file__),
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
