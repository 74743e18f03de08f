"""2-D depictions of generated molecules, as one PNG grid a chemist can read at a glance.

    python -m reed_molecule.depict samples.sdf --out samples.png            # the first 48
    python -m reed_molecule.sample --run-dir runs/x --num 1000 --out x.sdf --grid x.png

Each panel is one molecule of the SDF in file order with its index and, when RDKit sanitises it,
its canonical SMILES, hydrogens hidden; else "not valid", and the molecule is drawn as generated,
hydrogens, bonds and charges unchanged, so the defect is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from reed_molecule.chem import smiles_of


def sdf_mols(path: str | Path, limit: int | None = None) -> list:
    """The molecules of an SDF as written (not sanitised, hydrogens kept), in file order."""
    from rdkit import Chem

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such SDF")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: holds no molecules")
    mols = []
    for i, mol in enumerate(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False)):
        if limit is not None and len(mols) >= limit:
            break
        if mol is None:
            raise ValueError(f"{path}: record {i} is not a molecule RDKit can read")
        mols.append(mol)
    if not mols:
        raise ValueError(f"{path}: holds no molecules")
    return mols


def legend(index: int, mol, width: int = 34) -> str:
    """``"index: SMILES"`` (cut to ``width`` characters) for a molecule RDKit sanitises, else
    ``"index: not valid"``."""
    smiles = smiles_of(mol)
    if smiles is None:
        return f"{index}: not valid"
    return f"{index}: {smiles if len(smiles) <= width else smiles[: width - 1] + '…'}"


def _for_drawing(mol, layout: bool = True):
    """A copy ready to draw: sanitised where possible (then hydrogens removed), with 2-D
    coordinates from RDKit's layout, or (``layout=False``) the generated 3-D coordinates seen
    along z."""
    from rdkit import Chem
    from rdkit.Chem import rdDepictor
    from rdkit.Chem.Draw import rdMolDraw2D

    m = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(m)
        m = Chem.RemoveHs(m)
        valid = True
    except Exception:  # noqa: BLE001 - RDKit raises several kinds for an unsanitisable molecule
        m = Chem.Mol(mol)  # hydrogens kept: an over-bonded atom shows as such
        m.UpdatePropertyCache(strict=False)
        valid = False
    if layout:
        m.RemoveAllConformers()
        rdDepictor.Compute2DCoords(m)
    else:
        m.GetConformer().Set3D(False)
    return rdMolDraw2D.PrepareMolForDrawing(m, kekulize=valid, addChiralHs=False)


def depict_grid(mols: list, path: str | Path, per_row: int = 8, panel: int = 250) -> Path:
    """Draw ``mols`` into a PNG grid of ``per_row`` columns of ``panel`` pixels square, written
    atomically to ``path``; legends: index, then the SMILES or "not valid". A molecule RDKit's
    2-D layout fails on (a generated tangle of bonds can put two atoms on one point) is drawn in
    its generated coordinates seen along z, its legend saying "3-D"; one that fails both leaves
    its panel empty and is named on stderr."""
    from rdkit import rdBase
    from rdkit.Chem.Draw import rdMolDraw2D

    quiet = rdBase.BlockLogs()  # noqa: F841 - no valence error per invalid molecule while it lives
    cols = min(per_row, len(mols))
    rows = -(-len(mols) // cols)
    drawer = rdMolDraw2D.MolDraw2DCairo(cols * panel, rows * panel, panel, panel)
    drawer.drawOptions().legendFontSize = 14
    for i, mol in enumerate(mols):
        drawer.SetOffset((i % cols) * panel, (i // cols) * panel)
        text = legend(i, mol)
        try:
            drawer.DrawMolecule(_for_drawing(mol), legend=text)
        except RuntimeError:  # RDKit: "Cannot normalize a zero length vector"
            try:
                drawer.DrawMolecule(_for_drawing(mol, layout=False), legend=f"{text} (3-D)")
            except RuntimeError as err:
                print(f"depict: molecule {i} could not be drawn ({err})", file=sys.stderr)
    drawer.FinishDrawing()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(drawer.GetDrawingText())
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        prog="python -m reed_molecule.depict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sdf", help="molecules, e.g. from python -m reed_molecule.sample --out x.sdf")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--num", type=int, default=48, help="the first NUM molecules (default 48)")
    p.add_argument("--per-row", type=int, default=8)
    p.add_argument("--panel", type=int, default=250, help="pixels per molecule, square")
    args = p.parse_args(argv)
    for flag, value in (("--num", args.num), ("--per-row", args.per_row), ("--panel", args.panel)):
        if value < 1:
            p.error(f"{flag}: must be >= 1, got {value}")
    try:
        mols = sdf_mols(args.sdf, args.num)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    path = depict_grid(mols, args.out, args.per_row, args.panel)
    print(f"wrote {len(mols)} depictions to {path}")
    return path


if __name__ == "__main__":
    main()
