"""Evaluate generated molecules (an SDF, or fresh samples from a run) with RDKit metrics.

    python -m reed_molecule.evaluate --sdf gen.sdf --data data/qm9.npz --fcd
    python -m reed_molecule.evaluate --npz gen.npz --data data/qm9.npz   # from sample --out X.npz
    python -m reed_molecule.evaluate --run-dir runs/qm9_reed --num 1000 --data data/qm9.npz

Prints (and with ``--out`` writes) JSON: atom/molecule stability, validity, connected validity,
uniqueness, novelty (vs the data's training split), MMFF energy/strain and optionally FCD against
the data's test split. FCD uses ChemNet: if the scored run was aligned to ChemNet the output says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reed_core.cli import main_guard
from reed_molecule.chem import get_vocab


def sdf_molecules(path: str, vocab):
    """Dense ``(x, a, c, e)`` of every SDF record, sanitizable or not (generated files hold both)."""
    from rdkit import Chem, RDLogger

    from reed_molecule.chem import mol_to_arrays

    RDLogger.DisableLog("rdApp.*")
    if not Path(path).exists():
        raise FileNotFoundError(f"--sdf: {path} does not exist")
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
    out = []
    for k, mol in enumerate(supplier):
        if mol is None:
            raise ValueError(f"--sdf: {path} record {k + 1} cannot be parsed (bad atom/bond block)")
        mol.UpdatePropertyCache(strict=False)
        out.append(
            mol_to_arrays(mol, vocab, where=f"--sdf {path} record {k + 1}", add_hs=False, kekulize=False)
        )
    if not out:
        raise ValueError(f"--sdf: {path} holds no molecules")
    return out


@main_guard
def main(argv: list[str] | None = None) -> dict:
    from reed_molecule.metrics import evaluate_molecules, frechet_chemnet_distance, valid_smiles_of

    p = argparse.ArgumentParser(
        prog="python -m reed_molecule.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sdf", help="generated molecules")
    src.add_argument("--npz", help="generated molecules as arrays (sample --out FILE.npz)")
    src.add_argument("--run-dir", help="sample from this run's last checkpoint")
    p.add_argument("--data", default=None, help="MoleculeArrays .npz (novelty, FCD reference)")
    p.add_argument("--vocab", default="qm9", help="element vocabulary of the SDF (qm9 | drugs)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fcd", action="store_true", help="also compute FCD vs the test split")
    p.add_argument("--no-mmff", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the metrics JSON here")
    args = p.parse_args(argv)

    chemnet_target = None
    if args.run_dir:
        from reed_molecule.sample import generate, load_run

        denoiser, cfg, vocab, counts = load_run(Path(args.run_dir) / "checkpoints" / "last.pt", args.device)
        chemnet_target = "chemnet" in cfg.reed.enabled
        num_atoms = counts.sample(args.num, np.random.default_rng(args.seed))
        mols = generate(denoiser, cfg, vocab, num_atoms, args.steps, args.seed, args.device)
    elif args.npz:
        from reed_molecule.sampling import load_npz

        if not Path(args.npz).is_file():
            raise SystemExit(f"error: --npz: {args.npz} does not exist")
        generated, vocab_name = load_npz(args.npz)
        vocab, mols = get_vocab(vocab_name), list(generated)
    else:
        try:
            vocab = get_vocab(args.vocab)
            mols = sdf_molecules(args.sdf, vocab)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"error: {err}") from err
    train_smiles, ref = None, None
    if args.data:
        from reed_molecule.data.arrays import MoleculeArrays

        arrays = MoleculeArrays.load(args.data)
        train_smiles = {arrays.smiles[i] for i in arrays.split("train")}
        ref = [arrays.smiles[i] for i in arrays.split("test")]
    out = evaluate_molecules(mols, vocab, train_smiles, mmff=not args.no_mmff)
    if args.fcd:
        if ref is None:
            raise SystemExit("error: --fcd needs --data (the test split is the reference)")
        out["fcd"] = frechet_chemnet_distance(valid_smiles_of(mols, vocab), ref, device=args.device)
        if chemnet_target:
            out["fcd_note"] = "ChemNet was also this run's alignment target"
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
