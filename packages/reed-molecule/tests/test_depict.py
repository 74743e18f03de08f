import numpy as np
import pytest

pytest.importorskip("rdkit")
from PIL import Image  # noqa: E402
from rdkit import Chem  # noqa: E402
from rdkit.Chem import AllChem  # noqa: E402

from reed_molecule.depict import depict_grid, legend, main, sdf_mols  # noqa: E402


def embedded(smiles: str):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=0) == 0
    return mol


def pentavalent_carbon():
    """CH4 with a fifth bond to a second carbon: written as generated, not sanitisable."""
    rw = Chem.RWMol(embedded("CC"))
    h = next(a.GetIdx() for a in rw.GetAtomWithIdx(0).GetNeighbors() if a.GetSymbol() == "H")
    rw.RemoveBond(0, h)
    rw.AddBond(1, h, Chem.BondType.SINGLE)  # C1 now has 5 bonds
    mol = rw.GetMol()
    mol.UpdatePropertyCache(strict=False)
    return mol


@pytest.fixture
def sdf(tmp_path):
    path = tmp_path / "gen.sdf"
    writer = Chem.SDWriter(str(path))
    writer.SetKekulize(False)
    for mol in (embedded("CCO"), embedded("c1ccccc1"), pentavalent_carbon()):
        writer.write(mol)
    writer.close()
    return path


def test_legends_name_the_molecule_or_say_it_is_not_valid(sdf):
    mols = sdf_mols(sdf)
    assert [legend(i, m) for i, m in enumerate(mols)] == ["0: CCO", "1: c1ccccc1", "2: not valid"]
    assert legend(7, mols[0], width=2) == "7: C…"
    assert len(sdf_mols(sdf, limit=2)) == 2


def test_grid_has_one_drawn_panel_per_molecule(sdf, tmp_path):
    out = main([str(sdf), "--out", str(tmp_path / "grid.png"), "--per-row", "2", "--panel", "120"])
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape == (2 * 120, 2 * 120)  # 3 molecules, 2 a row: 2 rows
    panels = [image[r * 120 : (r + 1) * 120, c * 120 : (c + 1) * 120] for r in range(2) for c in range(2)]
    drawn = [int((p < 128).sum()) for p in panels]
    assert all(n > 50 for n in drawn[:3]), drawn  # bonds and labels on each molecule's panel
    assert drawn[3] == 0  # the fourth panel is empty
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_bad_input_names_the_file_or_flag(tmp_path, sdf, capsys):
    with pytest.raises(SystemExit, match="missing.sdf: no such SDF"):
        main([str(tmp_path / "missing.sdf"), "--out", str(tmp_path / "x.png")])
    empty = tmp_path / "empty.sdf"
    empty.write_text("")
    with pytest.raises(SystemExit, match="empty.sdf: holds no molecules"):
        main([str(empty), "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit) as exit_:
        main([str(sdf), "--out", str(tmp_path / "x.png"), "--num", "0"])
    assert exit_.value.code == 2 and "--num: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert depict_grid(sdf_mols(sdf, 1), tmp_path / "one.png").exists()


def test_a_molecule_the_2d_layout_fails_on_is_drawn_in_its_own_coordinates(tmp_path):
    """Generated bond tangles can make RDKit's 2-D drawing fail ("Cannot normalize a zero length
    vector"); the grid then draws that molecule as generated, and the others as usual."""
    from pathlib import Path

    from rdkit.Chem.Draw import rdMolDraw2D

    from reed_molecule.depict import _for_drawing

    undrawable = sdf_mols(Path(__file__).parent / "data" / "undrawable.sdf")[0]
    with pytest.raises(RuntimeError):  # what the fallback is for
        rdMolDraw2D.MolDraw2DCairo(100, 100).DrawMolecule(_for_drawing(undrawable))
    out = depict_grid([embedded("CCO"), undrawable], tmp_path / "grid.png", per_row=2, panel=120)
    image = np.asarray(Image.open(out).convert("L"))
    assert all(int((image[:, c * 120 : (c + 1) * 120] < 128).sum()) > 50 for c in range(2))
