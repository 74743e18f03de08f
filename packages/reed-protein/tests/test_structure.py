import gzip
import io

import numpy as np
import pytest

from reed_protein.data.residues import ALPHABET, UNK, decode, encode, parent_letter
from reed_protein.data.structure import StructureError, read_chains, read_structure


def _pdb_lines(path, n_residues=None):
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("ATOM")]
    if n_residues is not None:
        keep = sorted({ln[22:27] for ln in lines}, key=lambda r: int(r[:4]))[:n_residues]
        lines = [ln for ln in lines if ln[22:27] in keep]
    return lines


def test_reads_real_pdb(small_pdbs):
    p = read_structure(small_pdbs[0])
    assert p.X.shape == (len(p), 4, 3) and len(p) > 80
    assert np.isfinite(p.X).all()
    assert set(p.sequence) <= set(ALPHABET)
    # consecutive CA atoms of a chain without breaks are 3.8 A apart
    d = np.linalg.norm(np.diff(p.X[:, 1], axis=0), axis=1)
    assert np.allclose(d, 3.8, atol=0.15)
    assert (p.segment == 0).all() and (np.diff(p.residue_index) == 1).all()


def test_pdb_cif_bcif_gzip_agree(data_dir, tmp_path):
    import biotite.structure.io.pdbx as pdbx

    a = read_chains(data_dir / "mmcif" / "1BD2.pdb.gz", chains=["A"])[0]
    b = read_chains(data_dir / "mmcif" / "1BD2.cif.gz", chains=["A"])[0]
    assert a.sequence == b.sequence
    np.testing.assert_allclose(a.X, b.X, atol=1e-3)
    plain = read_structure(data_dir / "mmcif" / "1YJP.cif")
    cif = pdbx.CIFFile.read(str(data_dir / "mmcif" / "1YJP.cif"))
    bcif_path = tmp_path / "1YJP.bcif.gz"
    atoms = pdbx.get_structure(cif, model=1)
    out = pdbx.BinaryCIFFile()
    pdbx.set_structure(out, atoms)
    raw = io.BytesIO()
    out.write(raw)
    bcif_path.write_bytes(gzip.compress(raw.getvalue()))
    c = read_structure(bcif_path)
    assert c.sequence == plain.sequence == "GNNQQNY"
    np.testing.assert_allclose(c.X, plain.X, atol=1e-3)


def test_modified_residues_map_to_parent(data_dir):
    p = read_chains(data_dir / "1hvr.pdb", chains=["A"])[0]
    assert any("CSO->C" in n for n in p.notes)
    assert parent_letter("MSE") == "M" and parent_letter("HSD") == "H"  # CCD and force field
    assert parent_letter("HOH") is None and parent_letter("UNK") == "X"


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def test_hetatm_mse_and_unknown_residue(small_pdbs, tmp_path):
    lines = _pdb_lines(small_pdbs[0], 6)
    res = sorted({ln[22:27] for ln in lines}, key=lambda r: int(r[:4]))
    edited = []
    for ln in lines:
        if ln[22:27] == res[2]:
            ln = "HETATM" + ln[6:17] + "MSE" + ln[20:]
        if ln[22:27] == res[4]:
            ln = "HETATM" + ln[6:17] + "UNK" + ln[20:]
        edited.append(ln)
    p = read_structure(_write(tmp_path, "mse.pdb", edited))
    assert p.sequence[2] == "M" and p.aatype[4] == UNK
    assert any("MSE->M" in n for n in p.notes)


def test_altloc_keeps_highest_occupancy(small_pdbs, tmp_path):
    lines = _pdb_lines(small_pdbs[0], 3)
    out = []
    for ln in lines:
        if ln[12:16].strip() == "CA" and ln[22:27] == lines[0][22:27]:
            a = ln[:16] + "A" + ln[17:54] + "  0.30" + ln[60:]
            x = float(ln[30:38]) + 1.0
            b = ln[:16] + "B" + ln[17:30] + f"{x:8.3f}" + ln[38:54] + "  0.70" + ln[60:]
            out += [a, b]
        else:
            out.append(ln)
    p = read_structure(_write(tmp_path, "alt.pdb", out))
    assert p.X[0, 1, 0] == pytest.approx(float(lines[1][30:38]) + 1.0, abs=1e-3)
    assert any("alternate locations" in n for n in p.notes)


def test_gap_missing_atoms_and_insertion_codes(small_pdbs, tmp_path, data_dir):
    lines = _pdb_lines(small_pdbs[0], 20)
    res = sorted({ln[22:27] for ln in lines}, key=lambda r: int(r[:4]))
    drop = set(res[8:11])  # three missing residues
    lines = [ln for ln in lines if ln[22:27] not in drop]
    lines = [ln for ln in lines if not (ln[22:27] == res[3] and ln[12:16].strip() == "O")]
    lines = [ln for ln in lines if not (ln[22:27] == res[15] and ln[12:16].strip() == "CA")]
    p = read_structure(_write(tmp_path, "gap.pdb", lines))
    assert len(p) == 20 - 3 - 1
    assert p.segment.max() == 2  # the 3-residue gap and the dropped residue 15
    assert p.residue_index[8] - p.residue_index[7] == 4  # jumps over the 3 missing residues
    o_c = np.linalg.norm(p.X[3, 3] - p.X[3, 2])
    assert o_c == pytest.approx(1.23, abs=1e-3)
    notes = " ".join(p.notes)
    assert "placed a missing O" in notes and "dropped 1 residues" in notes and "chain breaks" in notes
    ins = read_structure(data_dir / "1osm.pdb.gz")
    assert any("insertion codes" in n for n in ins.notes)


def test_multimodel_first_model(data_dir):
    p = read_structure(data_dir / "mmcif" / "multimodel_warning.cif.gz")
    assert any("models; used the first" in n for n in p.notes)


@pytest.mark.parametrize(
    "case,match",
    [
        ("empty", "empty"),
        ("no_protein", "no protein chain"),
        ("truncated_gz", "truncated"),
        ("json_as_pdb", "no ATOM/HETATM"),
        ("pdb_as_cif", "cannot be read as mmCIF"),
        ("unknown_ext", "unknown structure format"),
        ("missing", "no such file"),
    ],
)
def test_bad_files_give_clear_errors(case, match, tmp_path, small_pdbs, data_dir):
    if case == "empty":
        path = tmp_path / "empty.pdb"
        path.write_text("")
    elif case == "no_protein":
        path = data_dir / "merge" / "2zmm" / "water.pdb"
    elif case == "truncated_gz":
        path = tmp_path / "cut.pdb.gz"
        path.write_bytes(small_pdbs[0].read_bytes()[:3000])
    elif case == "json_as_pdb":
        path = tmp_path / "x.pdb"
        path.write_text('{"not": "a structure"}\n')
    elif case == "pdb_as_cif":
        path = tmp_path / "x.cif"
        path.write_text("\n".join(_pdb_lines(small_pdbs[0], 3)) + "\n")
    elif case == "unknown_ext":
        path = tmp_path / "x.xyz"
        path.write_text("3\n\nC 0 0 0\n")
    else:
        path = tmp_path / "nope.pdb"
    with pytest.raises(StructureError, match=match) as err:
        read_structure(path)
    assert str(path) in str(err.value)


def test_nonexistent_chain_lists_chains(small_pdbs):
    with pytest.raises(StructureError, match=r"no chain 'Z'.*'A'"):
        read_structure(small_pdbs[0], chains=["Z"])


def test_encode_decode_roundtrip():
    assert decode(encode("ACDXY")) == "ACDXY"
