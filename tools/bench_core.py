"""Overhead of reed-core's taps + aligner + curriculum on a training step of a SiT-B/2-sized model.

A plain pre-norm transformer (12 blocks, width 768, 12 heads, 256 tokens, adaLN-free) is trained
with a velocity-style MSE loss in three ways, same batch, bf16 autocast, fused AdamW:

  vanilla   the model and its loss only
  inline    the same two targets written by hand: the model returns blocks 8 and 12's hidden states,
            3-layer SiLU projectors (hidden 2048) and cosine losses inline (no reed-core)
  reed      reed-core: ReedModel (forward-hook taps at block 8 + MultiLatentAligner, token target of
            width 768 and a mean-pooled target of width 384 at block 12), ReedObjective + Curriculum

"reed vs inline" is the cost of the generic machinery (target < 3%); "inline vs vanilla" is the
cost of the projector's own FLOPs, which any REPA-style method pays.

    python tools/bench_core.py --batch 128 --steps 30 [--compile]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from reed_core.alignment import AlignmentTarget, Projector
from reed_core.curriculum import Curriculum, CurriculumConfig
from reed_core.model import ReedModel
from reed_core.objective import ReedObjective
from reed_core.schedules import constant, linear_warmup


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, D // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, D))  # (B, N, D)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, width: int = 768, depth: int = 12, heads: int = 12, in_dim: int = 16):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.out = nn.Linear(width, in_dim)

    def tap_points(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def forward(self, x: torch.Tensor, return_depth: tuple[int, ...] = ()):
        h = self.embed(x)
        hiddens = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i + 1 in return_depth:
                hiddens.append(h)
        out = self.out(h)
        return (out, *hiddens) if return_depth else out


class InlineAligned(nn.Module):
    """REPA written by hand: hidden states returned by the network, projectors inline."""

    def __init__(self, net: Transformer, width: int):
        super().__init__()
        self.net = net
        self.proj = Projector(width, width, 2048, 3)
        self.proj_txt = Projector(width, 384, 2048, 3)

    def forward(self, x: torch.Tensor):
        out, h8, h12 = self.net(x, return_depth=(8, 12))
        return out, self.proj(h8), self.proj_txt(h12.mean(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    B, N, D, in_dim = args.batch, args.tokens, 768, 16
    x = torch.randn(B, N, in_dim, device=device)
    v = torch.randn(B, N, in_dim, device=device)
    z_tok = torch.randn(B, N, D, device=device)
    z_txt = torch.randn(B, 384, device=device)
    tau = torch.rand(B, device=device)

    def build(kind: str):
        torch.manual_seed(0)
        net = Transformer(in_dim=in_dim)
        if kind == "vanilla":
            model = net.to(device)

            def loss_fn(m, step):
                return (m(x).float() - v).pow(2).mean()
        elif kind == "inline":
            model = InlineAligned(net, D).to(device)

            def loss_fn(m, step):
                out, h_vision, h_text = m(x)
                cos = F.cosine_similarity(h_vision.float(), z_tok.float(), dim=-1)
                cos_txt = F.cosine_similarity(h_text.float(), z_txt.float(), dim=-1)
                w_diff = min(step / 1000, 1.0)
                gen = (out.float() - v).pow(2).mean()
                return w_diff * gen + (1 - cos).mean() + 0.5 * (1 - cos_txt).mean()
        else:
            targets = [
                AlignmentTarget("vision", 8, D, "token", weight=1.0),
                AlignmentTarget("text", 12, 384, "mean", weight=0.5),
            ]
            model = ReedModel(net, targets, hidden_dims={"vision": D, "text": D}).to(device)
            curriculum = Curriculum(
                CurriculumConfig(w_diff=linear_warmup(0, 1000), w_align=constant()), ["vision", "text"]
            )
            objective = ReedObjective(curriculum, model.targets)

            def loss_fn(m, step):
                out, terms = m(x, tau=tau, z_targets={"vision": z_tok, "text": z_txt})
                gen = (out.float() - v).pow(2).mean((1, 2))  # [B]
                return objective(gen, terms, progress=step).loss

        train_model = torch.compile(model) if args.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        return model, train_model, opt, loss_fn

    results = {}
    for kind in ("vanilla", "inline", "reed"):
        model, train_model, opt, loss_fn = build(kind)
        times = []
        for step in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(train_model, step)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
        times.sort()
        median = times[len(times) // 2]
        results[kind] = {
            "step_ms": 1000 * median,
            "images_per_s": B / median,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        }
        print(
            f"{kind:8s} step {1000 * median:8.2f} ms  {B / median:8.1f} img/s  "
            f"params {results[kind]['params_M']:.1f}M",
            flush=True,
        )
        del model, train_model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    overhead = results["reed"]["step_ms"] / results["inline"]["step_ms"] - 1
    projector = results["inline"]["step_ms"] / results["vanilla"]["step_ms"] - 1
    print(f"reed-core machinery vs hand-written REPA: {100 * overhead:+.2f}% (target < 3%)")
    print(f"alignment projector cost vs vanilla:      {100 * projector:+.2f}%")
    summary = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "batch": B,
        "tokens": N,
        "compile": args.compile,
        "results": results,
        "machinery_overhead": overhead,
        "projector_overhead": projector,
        "torch": torch.__version__,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)


if __name__ == "__main__":
    main()
