"""Read protein backbones from PDB, mmCIF and BinaryCIF files (optionally gzip/bzip2-compressed;
AutoDock's PDBQT is read as PDB: its extra columns follow the coordinates).

One :class:`Protein` holds the backbone ``X [L, 4, 3]`` (N, CA, C, O; the virtual CB is computed in
the model from N, CA, C), the sequence as tokens, and per residue the chain id, a residue index
for relative positions and a segment id that changes at every chain break.

What the reader does with imperfect files (each case is reported in ``Protein.notes`` and logged):

* several models (NMR, trajectories): the first model is used;
* alternate locations: the location of highest occupancy is kept;
* insertion codes: each inserted residue is its own residue, in file order;
* modified residues (MSE, SEP, force-field names such as HSD/CYX): mapped to the parent amino acid
  through the Chemical Component Dictionary; residues with no standard parent become ``X``;
* a residue without N, CA or C is dropped; a missing O is placed from ideal geometry;
* missing residues (a gap in numbering or a C(i)-N(i+1) distance over 2.0 A) start a new segment,
  and the residue index jumps by the number of missing residues;
* chains without amino acids (DNA, ligands, water) are skipped.

A PDB file that was cut off (a download or copy that stopped early) is refused with a
:class:`StructureError` rather than read in part: its last line is an incomplete ATOM record, or it
ends on coordinates (no TER/END after them) and its last residue lacks backbone atoms, a chain its
SEQRES records list has no atoms (also when it ends on a TER but no END), or its last chain has
fewer residues than SEQRES lists.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reed_core.cli import UserError
from reed_protein.data.residues import ALPHABET, UNK, decode, parent_letter

log = logging.getLogger(__name__)

FORMATS = {".pdb": "pdb", ".ent": "pdb", ".pdbqt": "pdb", ".cif": "cif", ".mmcif": "cif", ".bcif": "bcif"}
COMPRESSIONS = (".gz", ".bz2")
BACKBONE = ("N", "CA", "C", "O")
PEPTIDE_BOND_MAX = 2.0  # A; a C(i)-N(i+1) distance above this is a chain break
BLANK_CHAIN = "_"  # name given to chains with an empty chain id


class StructureError(UserError, ValueError):
    """A structure file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Protein:
    """Backbone and sequence of one or more chains.

    X: ``[L, 4, 3]`` float32 N, CA, C, O coordinates (A). aatype: ``[L]`` int64 in ``0..20``
    (20 = unknown). chain_id: ``[L]`` str. residue_index: ``[L]`` int64, increasing within a chain
    with jumps over missing residues. segment: ``[L]`` int64, a new value at each chain break and
    each new chain.
    """

    name: str
    X: np.ndarray
    aatype: np.ndarray
    chain_id: np.ndarray
    residue_index: np.ndarray
    segment: np.ndarray
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        L = len(self.aatype)
        if self.X.shape != (L, 4, 3):
            raise ValueError(f"{self.name}: X has shape {self.X.shape}, expected ({L}, 4, 3)")
        for key in ("chain_id", "residue_index", "segment"):
            if len(getattr(self, key)) != L:
                raise ValueError(f"{self.name}: {key} has {len(getattr(self, key))} rows, not {L}")

    def __len__(self) -> int:
        return len(self.aatype)

    @property
    def sequence(self) -> str:
        return decode(self.aatype)

    @property
    def chains(self) -> list[str]:
        return list(dict.fromkeys(self.chain_id.tolist()))

    @property
    def chain_labels(self) -> np.ndarray:
        """``[L]`` int64: 0 for the first chain, 1 for the second, ..."""
        order = {c: i for i, c in enumerate(self.chains)}
        return np.array([order[c] for c in self.chain_id.tolist()], dtype=np.int64)

    def select_chains(self, chains: Sequence[str]) -> Protein:
        missing = [c for c in chains if c not in self.chains]
        if missing:
            raise StructureError(
                f"{self.name}: no protein chain {', '.join(map(repr, missing))}; "
                f"protein chains are {', '.join(map(repr, self.chains))}"
            )
        keep = np.isin(self.chain_id, list(chains))
        return Protein(
            name=self.name,
            X=self.X[keep],
            aatype=self.aatype[keep],
            chain_id=self.chain_id[keep],
            residue_index=self.residue_index[keep],
            segment=self.segment[keep],
            notes=self.notes,
        )


def _split_suffix(path: Path) -> tuple[str, str | None]:
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSIONS else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        known = ", ".join(sorted(FORMATS)) + " (optionally + " + "/".join(COMPRESSIONS) + ")"
        raise StructureError(
            f"{path}: unknown structure format {''.join(path.suffixes)!r}; expected one of {known}"
        )
    return fmt, compression


def _read_bytes(path: Path, compression: str | None) -> bytes:
    if not path.exists():
        raise StructureError(f"{path}: no such file")
    if path.is_dir():
        raise StructureError(f"{path}: is a directory, not a structure file")
    raw = path.read_bytes()
    if not raw.strip():
        raise StructureError(f"{path}: the file is empty")
    try:
        if compression == ".gz":
            raw = gzip.decompress(raw)
        elif compression == ".bz2":
            raw = bz2.decompress(raw)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as err:
        raise StructureError(
            f"{path}: cannot decompress {compression} data ({err}); the file is truncated or "
            f"not {compression}-compressed"
        ) from err
    if not raw.strip():
        raise StructureError(f"{path}: the file is empty after decompression")
    return raw


def pdb_truncation(text: str) -> str | None:
    """Why the PDB ``text`` looks cut off before its end, or ``None`` (see the module docstring).

    A file that ends on an ATOM/HETATM/ANISOU record without a TER or END is normal for many
    tools, so it only counts together with an incomplete last residue or a SEQRES mismatch (a
    SEQRES chain without atoms also when the file ends on a TER without an END)."""
    lines = [line for line in text.splitlines() if line.strip()]
    records = [line for line in lines if line.startswith(("ATOM  ", "HETATM"))]
    if not records:
        return None
    last = lines[-1]
    on_coordinates = last.startswith(("ATOM  ", "HETATM", "ANISOU"))  # not even a TER after them
    ends_open = on_coordinates or last.startswith("TER")  # no END/ENDMDL/MASTER/CONECT
    if last.startswith(("ATOM  ", "HETATM")):
        try:
            [float(last[c : c + 8]) for c in (30, 38, 46)]
        except ValueError:
            return f"its last line is an incomplete {last[:6].strip()} record: {last.strip()!r}"
    if not ends_open:
        return None
    first_model = []
    for line in lines:
        if line.startswith("ENDMDL"):
            break
        if line.startswith(("ATOM  ", "HETATM")):
            first_model.append(line)
    seqres: dict[str, int] = {}
    for line in lines:
        if line.startswith("SEQRES") and line[13:17].strip().isdigit():
            seqres[line[11]] = int(line[13:17])
    chain = records[-1][21]
    residue = [r for r in records if r[17:27] == records[-1][17:27]]
    names = {r[12:16].strip() for r in residue}
    missing = [a for a in BACKBONE if a not in names]
    if on_coordinates and parent_letter(records[-1][17:20].strip()) is not None and missing:
        return (
            f"it ends inside residue {records[-1][17:20].strip()} {records[-1][22:27].strip()} of "
            f"chain {chain!r}, which has no {'/'.join(missing)} atoms, with no TER or END record"
        )
    with_atoms = {r[21] for r in first_model}
    absent = [c for c in seqres if c not in with_atoms]
    if absent:
        return (
            f"SEQRES lists chain {', '.join(map(repr, absent))} but the file has no atoms for it, "
            "and it ends without an END record"
        )
    if on_coordinates and chain in seqres:
        residues = {r[22:27] for r in first_model if r[21] == chain and parent_letter(r[17:20].strip())}
        if len(residues) < seqres[chain]:
            return (
                f"chain {chain!r} has {len(residues)} residues with atoms of the {seqres[chain]} its "
                "SEQRES lists, and the file ends without a TER or END record"
            )
    return None


def _load_atoms(path: Path):
    """First model as a biotite ``AtomArray`` with occupancy-resolved alternate locations."""
    with warnings.catch_warnings():  # biotite warns about guessed elements and fallback fields
        warnings.simplefilter("ignore", UserWarning)
        return _load_atoms_quiet(path)


def _load_atoms_quiet(path: Path):
    import biotite.structure as struc
    import biotite.structure.io.pdb as pdb
    import biotite.structure.io.pdbx as pdbx

    fmt, compression = _split_suffix(path)
    raw = _read_bytes(path, compression)
    notes = []
    try:
        if fmt == "pdb":
            text = raw.decode("utf-8", errors="replace")
            if not any(line.startswith(("ATOM", "HETATM")) for line in text.splitlines()):
                raise StructureError(f"{path}: no ATOM/HETATM records; is this a PDB file?")
            truncated = pdb_truncation(text)
            if truncated:
                raise StructureError(
                    f"{path}: the file looks truncated ({truncated}); download or export it again"
                )
            handle = pdb.PDBFile.read(io.StringIO(text))
            n_models = handle.get_model_count()
            atoms = handle.get_structure(model=1, altloc="all", extra_fields=["occupancy"])
        else:
            if fmt == "cif":
                handle = pdbx.CIFFile.read(io.StringIO(raw.decode("utf-8", errors="replace")))
            else:
                handle = pdbx.BinaryCIFFile.read(io.BytesIO(raw))
            if "atom_site" not in handle.block:
                raise StructureError(f"{path}: no atom_site category; is this an mmCIF file?")
            n_models = pdbx.get_model_count(handle)
            atoms = pdbx.get_structure(handle, model=1, altloc="all", extra_fields=["occupancy"])
    except StructureError:
        raise
    except Exception as err:  # biotite raises many types for malformed input
        kind = {"pdb": "PDB", "cif": "mmCIF", "bcif": "BinaryCIF"}[fmt]
        raise StructureError(
            f"{path}: cannot be read as {kind} ({type(err).__name__}: {err}); the file is "
            f"truncated or not in {kind} format"
        ) from err
    if atoms.array_length() == 0:
        raise StructureError(f"{path}: no atoms in the first model")
    if n_models > 1:
        notes.append(f"{n_models} models; used the first")
    altloc = np.char.strip(atoms.altloc_id.astype(str))
    has_alt = (altloc != "") & (altloc != ".") & (altloc != "?")
    if has_alt.any():
        n_res = len(
            {
                (c, r, i)
                for c, r, i in zip(atoms.chain_id[has_alt], atoms.res_id[has_alt], atoms.ins_code[has_alt])
            }
        )
        atoms = atoms[struc.filter_highest_occupancy_altloc(atoms, altloc, atoms.occupancy)]
        notes.append(f"{n_res} residues with alternate locations; kept the highest occupancy")
    return atoms, notes


def _ideal_oxygen(CA: np.ndarray, C: np.ndarray, N_next: np.ndarray | None) -> np.ndarray:
    """Carbonyl O 1.23 A from C, in the CA-C-N(next) plane opposite the bisector (or along CA->C)."""
    u = (C - CA) / np.linalg.norm(C - CA)
    if N_next is not None:
        v = (C - N_next) / np.linalg.norm(C - N_next)
        d = u + v
        u = d / max(np.linalg.norm(d), 1e-6)
    return (C + 1.23 * u).astype(np.float32)


def _chain_backbone(atoms, chain: str):
    """Residues of one chain -> (X [L,4,3], letters, res_ids, ins_codes, notes); L may be 0."""
    import biotite.structure as struc

    starts = struc.get_residue_starts(atoms, add_exclusive_stop=True)
    X, letters, res_ids, notes = [], [], [], []
    mapped: dict[str, str] = {}
    dropped, imputed_o, insertions = [], [], 0
    for a, b in zip(starts[:-1], starts[1:]):
        res = atoms[a:b]
        name = str(res.res_name[0])
        letter = parent_letter(name)
        if letter is None:
            continue  # not an amino acid: ligand, water, nucleotide, cap
        label = f"{name}{res.res_id[0]}{res.ins_code[0]}"
        names = res.atom_name.tolist()
        coords = {}
        for atom in BACKBONE:
            if atom in names:
                coords[atom] = res.coord[names.index(atom)]
        if any(atom not in coords for atom in ("N", "CA", "C")):
            dropped.append(label)
            continue
        if (
            name
            not in ("ALA CYS ASP GLU PHE GLY HIS ILE LYS LEU MET ASN PRO GLN ARG SER THR VAL TRP TYR").split()
        ):
            mapped[name] = letter
        if res.ins_code[0]:
            insertions += 1
        X.append([coords.get(atom, np.full(3, np.nan)) for atom in BACKBONE])
        letters.append(letter)
        res_ids.append(int(res.res_id[0]))
    X = np.asarray(X, dtype=np.float32).reshape(-1, 4, 3)
    for i in np.flatnonzero(np.isnan(X[:, 3, 0])):
        N_next = X[i + 1, 0] if i + 1 < len(X) else None
        X[i, 3] = _ideal_oxygen(X[i, 1], X[i, 2], N_next)
        imputed_o.append(i)
    if mapped:
        notes.append(
            "chain {}: mapped {} to the parent amino acid".format(
                chain, ", ".join(f"{k}->{v}" for k, v in sorted(mapped.items()))
            )
        )
    if dropped:
        shown = ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else "")
        notes.append(f"chain {chain}: dropped {len(dropped)} residues without N/CA/C ({shown})")
    if imputed_o:
        notes.append(f"chain {chain}: placed a missing O from ideal geometry at {len(imputed_o)} residues")
    if insertions:
        notes.append(f"chain {chain}: {insertions} residues with insertion codes, kept in file order")
    return X, letters, np.asarray(res_ids, dtype=np.int64), notes


def _segments(X: np.ndarray, res_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Residue index with jumps over missing residues, segment ids, and the number of breaks."""
    L = len(X)
    residue_index = np.zeros(L, dtype=np.int64)
    segment = np.zeros(L, dtype=np.int64)
    breaks = 0
    for i in range(1, L):
        gap = int(res_ids[i] - res_ids[i - 1])
        peptide = np.linalg.norm(X[i, 0] - X[i - 1, 2])
        is_break = peptide > PEPTIDE_BOND_MAX or gap > 1
        breaks += int(is_break)
        residue_index[i] = residue_index[i - 1] + (max(gap, 2) if is_break else 1)
        segment[i] = segment[i - 1] + int(is_break)
    return residue_index, segment, breaks


def read_chains(path: str | Path, chains: Sequence[str] | None = None, min_length: int = 1) -> list[Protein]:
    """Every protein chain of a structure file (or the ``chains`` asked for), one :class:`Protein`
    per chain, in file order. Raises :class:`StructureError` with the file name on bad input."""
    path = Path(path)
    atoms, file_notes = _load_atoms(path)
    stem = path.name.split(".")[0]
    chain_ids = list(dict.fromkeys(atoms.chain_id.tolist()))
    if chains is not None:
        wanted = [BLANK_CHAIN if c in ("", " ") else c for c in chains]
        present = [BLANK_CHAIN if c == "" else c for c in chain_ids]
        missing = [c for c in wanted if c not in present]
        if missing:
            raise StructureError(
                f"{path}: no chain {', '.join(map(repr, missing))}; the file has "
                f"chains {', '.join(map(repr, present))}"
            )
        chain_ids = ["" if c == BLANK_CHAIN else c for c in wanted]
    out = []
    skipped = []
    for chain in chain_ids:
        name = chain or BLANK_CHAIN
        X, letters, res_ids, notes = _chain_backbone(atoms[atoms.chain_id == chain], name)
        if len(X) < max(min_length, 1):
            if chains is not None:
                what = (
                    "no amino-acid residues with backbone atoms"
                    if len(X) == 0
                    else (f"only {len(X)} residues (min_length {min_length})")
                )
                raise StructureError(f"{path}: chain {name!r} has {what}")
            skipped.append(name)
            continue
        residue_index, segment, breaks = _segments(X, res_ids)
        if breaks:
            notes.append(f"chain {name}: {breaks} chain breaks (missing residues), marked as new segments")
        if chain == "":
            notes.append(f"blank chain id named {BLANK_CHAIN!r}")
        aatype = np.array([ALPHABET.index(c) if c in ALPHABET else UNK for c in letters], dtype=np.int64)
        protein = Protein(
            name=f"{stem}_{name}",
            X=X,
            aatype=aatype,
            chain_id=np.array([name] * len(X)),
            residue_index=residue_index,
            segment=segment,
            notes=tuple(file_notes + notes),
        )
        out.append(protein)
    if not out:
        raise StructureError(
            f"{path}: no protein chain (no amino-acid residues with N, CA and C "
            f"atoms{'; chains ' + ', '.join(skipped) if skipped else ''})"
        )
    if skipped:
        note = f"skipped chains without protein residues: {', '.join(skipped)}"
        out = [_with_note(p, note) for p in out]
    for p in out:
        for note in p.notes:
            log.debug("%s: %s", p.name, note)
    return out


def _with_note(p: Protein, note: str) -> Protein:
    return Protein(p.name, p.X, p.aatype, p.chain_id, p.residue_index, p.segment, p.notes + (note,))


def concat_chains(parts: Sequence[Protein], name: str) -> Protein:
    """Chains -> one multi-chain :class:`Protein` (segments renumbered to stay distinct)."""
    offset = 0
    segments = []
    for p in parts:
        segments.append(p.segment + offset)
        offset = int(segments[-1].max()) + 1
    notes = tuple(dict.fromkeys(n for p in parts for n in p.notes))
    return Protein(
        name=name,
        X=np.concatenate([p.X for p in parts]),
        aatype=np.concatenate([p.aatype for p in parts]),
        chain_id=np.concatenate([p.chain_id for p in parts]),
        residue_index=np.concatenate([p.residue_index for p in parts]),
        segment=np.concatenate(segments),
        notes=notes,
    )


def read_structure(path: str | Path, chains: Sequence[str] | None = None) -> Protein:
    """All protein chains of ``path`` (or ``chains``) as one multi-chain :class:`Protein`."""
    parts = read_chains(path, chains)
    stem = Path(path).name.split(".")[0]
    suffix = "".join(p.chain_id[0] for p in parts) if chains is not None else ""
    return concat_chains(parts, f"{stem}_{suffix}" if suffix else stem)
