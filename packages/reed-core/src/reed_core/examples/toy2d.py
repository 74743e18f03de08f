"""A new domain on reed-core's public API alone: flow matching on a 2-D mixture of Gaussians.

Data ``x0`` comes from a grid of Gaussian modes. A "pretrained encoder" knows which mode a point
came from and embeds it as a fixed 16-d code ``z`` (a stand-in for DINOv2 on images): REED aligns
the denoiser's hidden state at block ``reed.targets.mode.depth`` to ``z``, with diffusion warm-up.

    x_tau = (1 - tau) x0 + tau eps,   v = eps - x0,   L_gen = |v_theta(x_tau, tau) - v|^2

Everything a domain supplies is here: data (:class:`ToyTask.batch`), a tappable model
(:class:`ToyDenoiser` with ``tap_points``), a per-sample generative loss, the target
representations ``z``, a sampler (:func:`sample`) and a metric (:func:`sliced_wasserstein`). The
recipe (targets, curriculum) is reed-core's ``reed`` section, built by
:func:`reed_core.recipe.assemble`. Run it::

    python -m reed_core.examples.toy2d --preset reed train.steps=1500
    python -m reed_core.examples.toy2d --preset vanilla
    python -m reed_core.examples.toy2d reed.targets.mode.depth=3 reed.curriculum.w_align.kind=cosine \\
        reed.curriculum.w_align.end=1500 reed.curriculum.w_align.v_end=0
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from reed_core.cli import main_guard
from reed_core.curriculum import CurriculumConfig
from reed_core.launch import add_train_args, launch_or_run, train_config_from_args
from reed_core.objective import ObjectiveOutput
from reed_core.recipe import ReedConfig, TargetConfig, assemble
from reed_core.schedules import constant, linear_warmup
from reed_core.train import EpochSampler, TrainConfig, Trainer, seed_everything


@dataclass(frozen=True)
class Toy2DConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            run_dir="runs/toy2d",
            steps=1500,
            batch_size=256,
            lr=2e-3,
            log_every=100,
            ckpt_every=500,
            ema_decay=0.99,
            grad_clip=1.0,
        )
    )
    grid: int = 4  # grid x grid modes
    mode_std: float = 0.05
    num_examples: int = 16384
    width: int = 128
    depth: int = 4
    z_dim: int = 16  # width of the mode codes z
    # one target, the mode code, at block 1 (lambda 2); w_diff warms up over 100 steps
    reed: ReedConfig = field(
        default_factory=lambda: ReedConfig(
            targets={"mode": TargetConfig(encoder="mode-code", depth=1, weight=2.0, projector_hidden=128)},
            curriculum=CurriculumConfig(w_diff=linear_warmup(0, 100), w_align=constant()),
        )
    )
    eval_samples: int = 2048
    sample_steps: int = 32


def vanilla() -> Toy2DConfig:
    """The same model without alignment (the target switched off) or diffusion warm-up."""
    cfg = Toy2DConfig()
    mode = replace(cfg.reed.targets["mode"], enabled=False)
    return replace(cfg, reed=ReedConfig(targets={"mode": mode}, curriculum=CurriculumConfig()))


def presets() -> dict[str, callable]:
    return {"reed": Toy2DConfig, "vanilla": vanilla}


class ToyDenoiser(nn.Module):
    """``v_theta(x_tau, tau)``: an MLP of residual blocks; each block is a tap point."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        self.embed = nn.Linear(2 + 16, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(depth)
        )
        self.out = nn.Linear(width, 2)
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), 8)))

    def tap_points(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def forward(self, x_tau: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        angles = tau[:, None] * self.freqs  # [B, 8]
        h = self.embed(torch.cat([x_tau, angles.sin(), angles.cos()], -1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class ToyTask:
    """The domain's side of the :class:`reed_core.train.Task` protocol."""

    def __init__(self, cfg: Toy2DConfig):
        self.cfg = cfg
        seed_everything(cfg.train.seed)  # the model's initialisation depends on the run seed only
        g = torch.Generator().manual_seed(1234)  # the data set is fixed, whatever the run seed
        axis = torch.linspace(-1.5, 1.5, cfg.grid)
        self.centres = torch.cartesian_prod(axis, axis)  # [M, 2]
        self.labels = torch.randint(0, len(self.centres), (cfg.num_examples,), generator=g)
        self.x0 = self.centres[self.labels] + cfg.mode_std * torch.randn(cfg.num_examples, 2, generator=g)
        self.codes = nn.functional.normalize(torch.randn(len(self.centres), cfg.z_dim, generator=g), dim=-1)
        unknown = sorted(set(cfg.reed.targets) - {"mode"})
        if unknown:
            raise ValueError(f"reed.targets: the toy task has one target, 'mode'; got also {unknown}")
        self.aligned = "mode" in cfg.reed.enabled
        recipe = assemble(
            ToyDenoiser(cfg.width, cfg.depth),
            cfg.reed,
            target_dims={"mode": cfg.z_dim},
            hidden_dims={"mode": cfg.width},
        )
        self.model, self.curriculum, self.objective = recipe.model, recipe.curriculum, recipe.objective
        self.sampler = EpochSampler(cfg.num_examples, cfg.train.batch_size, cfg.train.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch

    def batch(self, step: int, rank: int, world: int, device: torch.device) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.indices(step, rank, world))
        return {"x0": self.x0[idx].to(device), "z": self.codes[self.labels[idx]].to(device)}

    def graph_key(self, step: int) -> tuple:
        """None of ``loss``'s host values depend on ``step``: given the step as a tensor (under
        ``train.speed.cuda_graph``), the curriculum is evaluated on the device."""
        return ()

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> ObjectiveOutput:
        x0 = batch["x0"]
        tau = torch.rand(len(x0), device=x0.device)
        eps = torch.randn_like(x0)
        x_tau = (1 - tau[:, None]) * x0 + tau[:, None] * eps
        z_targets = {"mode": batch["z"]} if self.aligned else None  # [B, z_dim]
        v_pred, align = model(x_tau, tau, tau=tau, z_targets=z_targets)
        gen_loss = (v_pred.float() - (eps - x0)).pow(2).sum(-1)  # [B]
        progress = self.curriculum.progress(step, self.steps_per_epoch)
        return self.objective(gen_loss, align, progress)

    def evaluate(self, model: nn.Module, ema: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        device = next(ema.parameters()).device
        g = torch.Generator().manual_seed(0)
        x_gen = sample(ema.denoiser, self.cfg.eval_samples, self.cfg.sample_steps, g, device).cpu()
        ref = self.x0[torch.randperm(len(self.x0), generator=g)[: self.cfg.eval_samples]]
        return {"swd": sliced_wasserstein(x_gen, ref, g), "mode_precision": self.mode_precision(x_gen)}

    def mode_precision(self, x: torch.Tensor) -> float:
        """Fraction of samples within 3 std of some mode."""
        dist = torch.cdist(x, self.centres).min(-1).values
        return float((dist < 3 * self.cfg.mode_std).float().mean())


@torch.no_grad()
def sample(denoiser: nn.Module, n: int, steps: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Euler ODE from ``tau = 1`` (noise) to ``tau = 0``: ``x <- x - dtau * v_theta(x, tau)``."""
    x = torch.randn(n, 2, generator=g).to(device)
    taus = torch.linspace(1.0, 0.0, steps + 1, device=device)
    for tau, tau_next in zip(taus[:-1], taus[1:]):
        x = x + (tau_next - tau) * denoiser(x, tau.expand(n))
    return x


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, g: torch.Generator, num_dirs: int = 256) -> float:
    """``SW_2`` between equal-size point clouds: mean over random directions of sorted-projection L2."""
    dirs = nn.functional.normalize(torch.randn(num_dirs, a.shape[1], generator=g), dim=-1)
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values
    return float((pa - pb).pow(2).mean().sqrt())


def run(cfg: Toy2DConfig) -> dict[str, float]:
    return Trainer(cfg.train, ToyTask(cfg), experiment_config=cfg).fit()


@main_guard
def main(argv: list[str] | None = None) -> dict[str, float] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_train_args(parser, presets())
    args = parser.parse_intermixed_args(argv)
    cfg = train_config_from_args(Toy2DConfig, presets(), args)
    return launch_or_run(run, cfg, args)


if __name__ == "__main__":
    main()
