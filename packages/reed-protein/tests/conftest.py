"""Shared fixtures: real structures from the MDAnalysisTests data files (read as files only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def mda_data() -> Path:
    spec = importlib.util.find_spec("MDAnalysisTests")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("MDAnalysisTests (test structures) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return mda_data()


@pytest.fixture(scope="session")
def small_pdbs(data_dir) -> list[Path]:
    """Three single-chain crystal structures of 84-89 residues."""
    return [data_dir / "dssp" / f for f in ("2xcjA.pdb.gz", "1lpbA.pdb.gz", "1i8nA.pdb.gz")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)
