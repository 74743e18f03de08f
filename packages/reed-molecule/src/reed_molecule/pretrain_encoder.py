"""Train a 3-D molecular encoder on your own molecules, for use as an alignment target.

Uni-Mol-style pretraining (Zhou et al. 2023) on the equivariant network of
:mod:`reed_molecule.models.equivariant`: atom types are masked with probability ``mask_prob`` and
coordinates perturbed by Gaussian noise of std ``noise_std``; bonds are hidden (the encoder sees
3-D structure and elements only). The network predicts the clean coordinates, the masked types
and the bonds:

    L = || x0_hat - x0 ||^2  +  CE(a_logits, a)[masked]  +  CE(e_logits, e)

The embedding of a clean molecule is the masked mean of its last layer's invariant node states,
``z = mean_i s_i^(L)`` (one vector per molecule, like Uni-Mol's global embedding).

    python -m reed_molecule.pretrain_encoder data.path=my_mols.npz --run-dir runs/encoder
    python -m reed_molecule.targets --data my_mols.npz --target checkpoint:runs/encoder/checkpoints/last.pt \\
        --out features/my_encoder
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reed_core.cli import main_guard
from reed_core.config import add_config_args, config_from_args, config_from_dict
from reed_core.launch import add_slurm_args, launch_or_run
from reed_core.objective import ObjectiveOutput
from reed_core.taps import FeatureTaps
from reed_core.train import TrainConfig, Trainer, load_checkpoint, seed_everything
from reed_molecule.chem import NUM_BOND_CLASSES, get_vocab
from reed_molecule.configs import DataConfig
from reed_molecule.data.arrays import MoleculeArrays
from reed_molecule.data.batch import PaddedMolecules, training_sampler
from reed_molecule.models import DenoiserConfig, build_network


@dataclass(frozen=True)
class EncoderConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            run_dir="runs/encoder",
            steps=20_000,
            batch_size=128,
            lr=3e-4,
            lr_warmup_steps=500,
            ema_decay=0.999,
            log_every=100,
            ckpt_every=2000,
        )
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: DenoiserConfig = field(
        default_factory=lambda: DenoiserConfig(scalars=128, vectors=32, edge_dim=64, num_layers=6)
    )
    noise_std: float = 0.3  # Angstrom
    mask_prob: float = 0.15


PRESETS = {
    "default": EncoderConfig,
    "tiny": lambda: EncoderConfig(
        train=TrainConfig(
            run_dir="runs/encoder_tiny",
            steps=2,
            batch_size=4,
            log_every=1,
            ckpt_every=2,
            device="cpu",
            progress_bar=False,
            tensorboard=False,
        ),
        model=DenoiserConfig(scalars=16, vectors=4, edge_dim=8, num_layers=2, num_rbf=8),
    ),
}


def build_encoder(cfg: EncoderConfig, vocab) -> nn.Module:
    return build_network(
        replace(
            cfg.model,
            num_atom_types=len(vocab.atoms),
            num_charges=len(vocab.charges),
            num_bond_types=NUM_BOND_CLASSES,
            self_condition=False,
        )
    )


class EncoderTask:
    """reed-core ``Task`` for denoising / masked-atom pretraining."""

    def __init__(self, cfg: EncoderConfig, arrays: MoleculeArrays | None = None):
        self.cfg = cfg
        seed_everything(cfg.train.seed)
        arrays = arrays if arrays is not None else MoleculeArrays.load(cfg.data.path)
        self.vocab = arrays.vocab
        rows = arrays.training_rows(cfg.data.train_split, cfg.data.limit)
        self.data = PaddedMolecules(arrays, rows)
        self.model = build_encoder(cfg, self.vocab)
        d, t = cfg.data, cfg.train
        self.sampler = training_sampler(d.batching, self.data.num_atoms, t.batch_size, t.seed, d.bucket_chunk)
        self.steps_per_epoch = self.sampler.steps_per_epoch

    def state_dict(self) -> dict:
        return {"vocab": self.vocab.name}

    def batch(self, step: int, rank: int, world: int, device: torch.device):
        return self.data.batch(self.sampler.indices(step, rank, world)).to(device)

    def loss(self, model: nn.Module, batch, step: int) -> ObjectiveOutput:
        B, N = batch.a.shape
        T = len(self.vocab.atoms)
        m = batch.mask.float()
        x = batch.x0 + self.cfg.noise_std * torch.randn_like(batch.x0) * m.unsqueeze(-1)
        masked = (torch.rand(B, N, device=x.device) < self.cfg.mask_prob) & batch.mask
        a_in = torch.where(masked, torch.full_like(batch.a, T), batch.a)
        e_in = torch.full_like(batch.e, NUM_BOND_CLASSES)
        tau = torch.zeros(B, device=x.device)
        x0_hat, a_logits, _, e_logits = model(x, a_in, batch.c, e_in, batch.mask, tau)
        L_x = (((x0_hat - batch.x0) ** 2).sum(-1) * m).sum() / m.sum()
        L_a = F.cross_entropy(a_logits[masked].float(), batch.a[masked]) if masked.any() else x0_hat.sum() * 0
        pair = (batch.mask.unsqueeze(1) & batch.mask.unsqueeze(2)).float()
        ce_e = F.cross_entropy(e_logits.float().permute(0, 3, 1, 2), batch.e, reduction="none")
        L_e = (ce_e * pair).sum() / pair.sum()
        loss = L_x + L_a + L_e
        return ObjectiveOutput(
            loss=loss,
            terms={
                "loss": loss.detach(),
                "loss_x": L_x.detach(),
                "loss_a": L_a.detach(),
                "loss_e": L_e.detach(),
            },
        )


def load_encoder(path: str | Path, device: str = "cpu"):
    """``(encoder, vocab)`` from a checkpoint written by this module's training run (EMA weights)."""
    state = load_checkpoint(path, map_location=device)
    try:
        cfg = config_from_dict(EncoderConfig, state["config"])
        vocab = get_vocab(state["task"]["vocab"])
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"checkpoint {path}: not a reed_molecule.pretrain_encoder run ({err})") from err
    model = build_encoder(cfg, vocab)
    model.load_state_dict(state["ema"])
    return model.to(device).eval(), vocab


@torch.no_grad()
def embed(model: nn.Module, molecules: Sequence[tuple], device="cpu") -> torch.Tensor:
    """``z [B, S]``: masked mean of the last layer's invariant node states of clean molecules."""
    n_max = max(len(m[1]) for m in molecules)
    B = len(molecules)
    x = torch.zeros(B, n_max, 3)
    a = torch.zeros(B, n_max, dtype=torch.long)
    c = torch.zeros(B, n_max, dtype=torch.long)
    e = torch.zeros(B, n_max, n_max, dtype=torch.long)
    mask = torch.zeros(B, n_max, dtype=torch.bool)
    for b, (xb, ab, cb, _) in enumerate(molecules):
        n = len(ab)
        xb = torch.as_tensor(np.asarray(xb), dtype=torch.float32)
        x[b, :n], a[b, :n], c[b, :n], mask[b, :n] = (
            xb - xb.mean(0),
            torch.as_tensor(ab),
            torch.as_tensor(cb),
            True,
        )
    e[:] = NUM_BOND_CLASSES  # bonds hidden, as in pretraining
    x, a, c, e, mask = (t.to(device) for t in (x, a, c, e, mask))
    last = model.tap_points()[-1]
    with FeatureTaps(model, {"z": last}) as taps:
        model(x, a, c, e, mask, torch.zeros(B, device=device))
        s = taps.pop()["z"]  # [B, N, S]
    m = mask.unsqueeze(-1).float()
    return (s * m).sum(1) / m.sum(1).clamp_min(1.0)


def run(cfg: EncoderConfig):
    return Trainer(cfg.train, EncoderTask(cfg), experiment_config=cfg).fit()


@main_guard
def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        prog="python -m reed_molecule.pretrain_encoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser, PRESETS)
    parser.add_argument("--run-dir", default=None, help="shorthand for train.run_dir=DIR")
    add_slurm_args(parser)
    args = parser.parse_intermixed_args(argv)
    cfg = config_from_args(EncoderConfig, PRESETS, args)
    if args.run_dir is not None:
        cfg = replace(cfg, train=replace(cfg.train, run_dir=args.run_dir))
    return launch_or_run(run, cfg, args)


if __name__ == "__main__":
    main()
