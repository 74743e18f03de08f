"""Bad input to ``reed-protein design`` and ``python -m reed_protein.train``: one ``error:`` line
naming the flag, key or file, exit status 2, and nothing written; a truncated PDB file is refused."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from reed_protein import cli, train
from reed_protein.data.datasets import load_files, save_proteins
from reed_protein.data.structure import StructureError, pdb_truncation, read_structure


def error_line(main, argv: list[str], capsys) -> str:
    """``main(argv)`` exits with status 2 and prints exactly one ``error:`` line; returns it."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def cut_pdbs(data_dir, tmp_path) -> dict[str, Path]:
    """1hvr (HIV protease, chains A and B, SEQRES) cut after half its lines, inside a line, inside
    chain B at a residue boundary, inside a residue, and after chain A's TER record."""
    lines = (data_dir / "1hvr.pdb").read_text().splitlines(keepends=True)
    text = "".join(lines)
    atoms = [i for i, line in enumerate(lines) if line.startswith("ATOM")]
    chain_b = [i for i in atoms if lines[i][21] == "B"]
    residue_start = next(i for i in chain_b[40:] if lines[i][12:16].strip() == "N")
    cuts = {
        "half_lines": "".join(lines[: len(lines) // 2]),
        "mid_line": text[: len(text) // 2],
        "chain_b_boundary": "".join(lines[:residue_start]),
        "mid_residue": "".join(lines[: residue_start + 2]),  # N and CA of a residue, no C
        "after_ter": "".join(lines[: next(i for i, line in enumerate(lines) if line.startswith("TER")) + 1]),
    }
    out = {}
    for name, cut in cuts.items():
        out[name] = tmp_path / f"{name}.pdb"
        out[name].write_text(cut)
    out["gz"] = tmp_path / "half.pdb.gz"
    out["gz"].write_bytes(gzip.compress(cuts["half_lines"].encode()))
    return out


def test_truncated_pdb_files_are_refused(cut_pdbs, data_dir):
    assert len(read_structure(data_dir / "1hvr.pdb")) == 198  # the whole file: both chains
    for name, path in cut_pdbs.items():
        with pytest.raises(StructureError, match="truncated") as err:
            read_structure(path)
        assert str(path) in str(err.value), name


def test_complete_pdb_files_are_not_called_truncated(data_dir):
    """No PDB file of the offline data (many end on ATOM records without TER/END) is flagged."""
    paths = [p for p in data_dir.rglob("*") if p.name.endswith((".pdb", ".pdb.gz", ".ent", ".ent.gz"))]
    assert len(paths) > 50
    for path in paths:
        raw = path.read_bytes()
        try:
            raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
        except OSError:  # a test file of MDAnalysis that is not what its name says
            continue
        assert pdb_truncation(raw.decode("utf-8", "replace")) is None, path


def test_design_refuses_a_truncated_file_with_one_error_line(cut_pdbs, tmp_path, capsys):
    out = tmp_path / "designs.fasta"
    line = error_line(cli.main, ["design", str(cut_pdbs["half_lines"]), "-o", str(out)], capsys)
    assert str(cut_pdbs["half_lines"]) in line and "truncated" in line
    assert not out.exists()


DESIGN_CASES = [
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--steps", "-5"], "--steps"),
    (["--num", "0"], "--num"),
    (["--device", "nonsense"], "--device"),
    (["--checkpoint", "MISSING"], "missing.pt"),
    (["--chain", "Q"], "no chain 'Q'"),
]


@pytest.mark.parametrize("flags,name", DESIGN_CASES, ids=[" ".join(c[0]) for c in DESIGN_CASES])
def test_design_bad_flags(flags, name, data_dir, tmp_path, capsys):
    out = tmp_path / "designs.fasta"
    flags = [f.replace("MISSING", str(tmp_path / "missing.pt")) for f in flags]
    pdb = data_dir / "dssp" / "1ahsA.pdb.gz"
    line = error_line(cli.main, ["design", str(pdb), *flags, "-o", str(out)], capsys)
    assert name in line
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_design_on_cuda_without_cuda(data_dir, tmp_path, capsys):
    out = tmp_path / "designs.fasta"
    pdb = data_dir / "dssp" / "1ahsA.pdb.gz"
    line = error_line(cli.main, ["design", str(pdb), "--device", "cuda", "-o", str(out)], capsys)
    assert "--device cuda" in line and "--device cpu" in line
    assert not out.exists()


TRAIN_CASES = [
    (["epochs=-1"], ["epochs"]),
    (["--steps", "2", "epochs=3"], ["--steps", "epochs"]),
    (["train.steps=2", "epochs=3"], ["train.steps", "epochs"]),
    (["--steps", "0"], ["--steps"]),
    (["data.source=npz"], ["data.path"]),
    (["data.source=npz", "data.path=MISSING"], ["missing.npz"]),
    (["data.source=npz", "data.path=GARBAGE"], ["garbage.npz"]),
    (["data.source=directory", "data.path=EMPTY"], ["empty_dir"]),
    (["data.source=pdbbind"], ["data.source"]),
]


@pytest.mark.parametrize("overrides,names", TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_train_bad_input(overrides, names, tmp_path, capsys):
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("a text file, not an .npz\n")
    (tmp_path / "empty_dir").mkdir()
    swap = {
        "MISSING": str(tmp_path / "missing.npz"),
        "GARBAGE": str(garbage),
        "EMPTY": str(tmp_path / "empty_dir"),
    }
    overrides = [next((o.replace(k, v) for k, v in swap.items() if k in o), o) for o in overrides]
    run_dir = tmp_path / "run"
    line = error_line(train.main, ["--preset", "tiny", *overrides, f"train.run_dir={run_dir}"], capsys)
    for name in names:
        assert name in line, line
    assert not run_dir.exists()  # nothing half-written


def test_an_explicit_step_count_wins_over_the_presets_epochs(small_pdbs, tmp_path):
    proteins = load_files(small_pdbs)
    names = [p.name for p in proteins]
    npz = save_proteins(
        tmp_path / "set.npz", proteins, {"train": names[:2], "validation": names[2:], "test": names[2:]}
    )
    run_dir = tmp_path / "run"
    common = ["--preset", "tiny", "data.source=npz", f"data.path={npz}", "reed.targets={}"]
    train.main([*common, "data.max_tokens=1000", "--steps", "1", f"train.run_dir={run_dir}"])
    steps = {json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    assert max(steps) == 1  # the preset's 2 epochs would be 2 steps here
    assert "epochs: 0" in (run_dir / "config.yaml").read_text()
