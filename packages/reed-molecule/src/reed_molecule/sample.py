"""Sample molecules from a trained run and write them to an SDF (or, with ``--out FILE.npz``, as
dense arrays that need no RDKit; ``python -m reed_molecule.evaluate --npz FILE.npz`` scores them).

    python -m reed_molecule.sample --run-dir runs/qm9_reed --num 1000 --steps 100 --out gen.sdf
    python -m reed_molecule.sample --checkpoint last.pt --num-atoms 9,12,19 --out gen.sdf

Atom counts are drawn from the training data's distribution (stored in the checkpoint) unless
``--num-atoms`` lists them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from reed_core.cli import main_guard
from reed_molecule.chem import NUM_BOND_CLASSES, get_vocab
from reed_molecule.sampling import AtomCountDistribution, sample_molecules, save_npz, write_sdf


def load_run(checkpoint: str | Path, device: str = "cpu", use_ema: bool = True):
    """``(denoiser, cfg, vocab, atom_counts)`` from a training checkpoint."""
    from reed_core.config import RenamedKeyError, config_from_dict
    from reed_core.train import load_checkpoint
    from reed_molecule.configs import MoleculeConfig
    from reed_molecule.task import build_denoiser

    state = load_checkpoint(checkpoint, map_location=device)
    if "task" not in state or "atom_counts" not in state["task"]:
        raise ValueError(f"checkpoint {checkpoint}: not a reed_molecule run (no atom counts)")
    try:
        cfg = config_from_dict(MoleculeConfig, state["config"])
    except RenamedKeyError as err:
        old = f"checkpoint {checkpoint}: its config uses keys of an older version"
        raise RenamedKeyError(f"{old}: {err}") from None
    vocab = get_vocab(state["task"]["vocab"])
    denoiser = build_denoiser(cfg, vocab)
    weights = state["ema" if use_ema else "model"]
    prefix = "denoiser."
    denoiser.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    counts = AtomCountDistribution.from_state_dict(state["task"]["atom_counts"])
    return denoiser.to(device).eval(), cfg, vocab, counts


def generate(
    denoiser, cfg, vocab, num_atoms: np.ndarray, steps: int, seed: int, device: str, batch_size: int = 512
) -> list:
    """Molecules of ``num_atoms`` from a loaded run (:func:`load_run`), ``steps`` integration steps."""
    classes = (len(vocab.atoms), len(vocab.charges), NUM_BOND_CLASSES)
    return list(
        sample_molecules(
            denoiser,
            num_atoms,
            steps,
            classes,
            cfg.flow.prior_sigma,
            seed=seed,
            device=device,
            batch_size=batch_size,
        )
    )


def parse_num_atoms(text: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in text.split(",") if v.strip()], dtype=np.int64)
    except ValueError:
        raise ValueError(f"--num-atoms: expected comma-separated integers, got {text!r}") from None


@main_guard
def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(
        prog="python -m reed_molecule.sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="run folder (uses checkpoints/last.pt)")
    src.add_argument("--checkpoint", help="checkpoint file")
    p.add_argument("--num", type=int, default=100, help="molecules to generate")
    p.add_argument("--num-atoms", default=None, help="comma-separated atom counts (overrides --num)")
    p.add_argument("--steps", type=int, default=100, help="integration steps")
    p.add_argument("--out", required=True, help="output .sdf, or .npz (arrays, no RDKit needed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--grid", default=None, help="also a PNG of 2-D depictions (needs an .sdf --out)")
    p.add_argument("--grid-num", type=int, default=48, help="molecules in the --grid (the first ones)")
    args = p.parse_args(argv)
    if args.grid is not None and not args.out.endswith(".sdf"):
        p.error(f"--grid: depicts the molecules of an .sdf --out, got --out {args.out}")
    if args.grid_num < 1:
        p.error(f"--grid-num: must be >= 1, got {args.grid_num}")
    ckpt = args.checkpoint or str(Path(args.run_dir) / "checkpoints" / "last.pt")
    try:
        denoiser, cfg, vocab, counts = load_run(ckpt, args.device, use_ema=not args.raw)
        if args.num_atoms is not None:
            num_atoms = counts.check(parse_num_atoms(args.num_atoms), "--num-atoms")
        else:
            if args.num < 1:
                raise ValueError(f"--num: must be >= 1, got {args.num}")
            num_atoms = counts.sample(args.num, np.random.default_rng(args.seed))
        if args.steps < 1:
            raise ValueError(f"--steps: must be >= 1, got {args.steps}")
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from err
    mols = generate(denoiser, cfg, vocab, num_atoms, args.steps, args.seed, args.device, args.batch_size)
    n = save_npz(mols, vocab, args.out) if args.out.endswith(".npz") else write_sdf(mols, vocab, args.out)
    print(f"wrote {n} molecules to {args.out}")
    if args.grid is not None:
        from reed_molecule.depict import depict_grid, sdf_mols

        depict_grid(sdf_mols(args.out, args.grid_num), args.grid)
        print(f"wrote the 2-D depictions of the first {min(n, args.grid_num)} to {args.grid}")
    return mols


if __name__ == "__main__":
    main()
