"""The amino-acid alphabet and the mapping of residue names onto it.

Tokens ``0..19`` are the 20 standard amino acids in ProteinMPNN's (alphabetical one-letter) order,
so our token ids and ProteinMPNN's agree; ``UNK = 20`` is an unknown residue (``X``: kept in the
structure, never a training target); ``MASK = 21`` is the absorbing state of the diffusion.
"""

from __future__ import annotations

import functools

import numpy as np

ALPHABET = "ACDEFGHIKLMNPQRSTVWY"
NUM_AA = 20
UNK = 20  # "X"
MASK = 21
VOCAB = 22  # 20 amino acids + X + mask, the decoder's input vocabulary
LETTERS = ALPHABET + "X"

STANDARD = {
    "ALA": "A",
    "CYS": "C",
    "ASP": "D",
    "GLU": "E",
    "PHE": "F",
    "GLY": "G",
    "HIS": "H",
    "ILE": "I",
    "LYS": "K",
    "LEU": "L",
    "MET": "M",
    "ASN": "N",
    "PRO": "P",
    "GLN": "Q",
    "ARG": "R",
    "SER": "S",
    "THR": "T",
    "VAL": "V",
    "TRP": "W",
    "TYR": "Y",
}

# Force-field (AMBER/CHARMM/GROMACS) names for protonation and disulfide states. They are not in
# the PDB's Chemical Component Dictionary (or, for HSE, mean something else there: homoserine); in
# the MD files where they occur they are the parent amino acid, so they take precedence.
FORCE_FIELD = {
    "HSD": "H",
    "HSE": "H",
    "HSP": "H",
    "HID": "H",
    "HIE": "H",
    "HIP": "H",
    "HISA": "H",
    "HISB": "H",
    "HISD": "H",
    "HISE": "H",
    "HISH": "H",
    "HIS1": "H",
    "HIS2": "H",
    "CYX": "C",
    "CYM": "C",
    "CYS2": "C",
    "CYN": "C",
    "ASH": "D",
    "GLH": "E",
    "LYN": "K",
    "LSN": "K",
}

# Letters outside the 20 whose parent amino acid is unambiguous.
_NONSTANDARD_LETTER = {"U": "C", "O": "K"}  # selenocysteine, pyrrolysine


@functools.cache
def _ccd_amino_acids() -> frozenset[str]:
    import biotite.structure.info as info

    return frozenset(info.amino_acid_names())


@functools.lru_cache(maxsize=4096)
def parent_letter(res_name: str) -> str | None:
    """One-letter code of ``res_name``'s parent amino acid: ``"A"``..``"Y"``, ``"X"`` when the
    residue is an amino acid without a standard parent, ``None`` when it is no amino acid."""
    name = res_name.strip().upper()
    if name in STANDARD:
        return STANDARD[name]
    if name in FORCE_FIELD:
        return FORCE_FIELD[name]
    if name not in _ccd_amino_acids():
        return None
    import biotite.structure.info as info

    letter = (info.one_letter_code(name) or "X").upper()
    letter = _NONSTANDARD_LETTER.get(letter, letter)
    return letter if letter in ALPHABET else "X"


def encode(sequence: str) -> np.ndarray:
    """``"ACX.."`` -> token ids ``[L]`` (``X`` and any other letter -> ``UNK``)."""
    index = {a: i for i, a in enumerate(ALPHABET)}
    return np.array([index.get(c, UNK) for c in sequence.upper()], dtype=np.int64)


def decode(tokens) -> str:
    """Token ids ``[L]`` -> one-letter string (``UNK`` and ``MASK`` -> ``X``)."""
    return "".join(LETTERS[t] if 0 <= t < NUM_AA else "X" for t in np.asarray(tokens).tolist())
