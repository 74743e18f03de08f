"""Target representations ``z`` for molecules (one global vector per molecule).

* ``chemnet``: the pretrained ChemNet SMILES encoder of fcd-torch (Preuer et al. 2018), 512-d
  penultimate activations of the canonical SMILES: a paired 2-D modality for a 3-D molecule.
  The same network defines FCD: a run aligned to it must say so next to its FCD.
* ``descriptors``: RDKit's 2-D descriptor list, standardised by the data's mean/std.
* ``morgan``: Morgan count fingerprint (radius 2, 2048 bits), ``log1p`` counts.
* ``unimol``: Uni-Mol's global (CLS) embedding, 512-d (Zhou et al. 2023), via ``unimol_tools``
  (weights fetched by that package; not reachable offline here).
* ``checkpoint:PATH``: a 3-D encoder trained by ``python -m reed_molecule.pretrain_encoder``
  (masked-pooled invariant node states of its last layer).

``build_target_store`` runs one encoder over a data split once and writes a reed-core
:class:`~reed_core.features.FeatureStore` keyed by the molecule id.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from reed_core.cli import main_guard
from reed_molecule.data.arrays import MoleculeArrays

CHEMNET_DIM = 512
MORGAN_BITS = 2048


def load_fcd(device: str = "cpu", n_jobs: int = 1, model_path: str | None = None):
    """fcd-torch's ``FCD`` object (holds the pretrained ChemNet on the CPU)."""
    try:
        from fcd_torch import FCD
    except ImportError as err:
        raise ImportError("ChemNet/FCD needs the package 'fcd-torch' (pip install fcd-torch)") from err
    return FCD(device=device, n_jobs=n_jobs, model_path=model_path)


def check_smiles(smiles: Sequence[str], where: str = "smiles") -> list[str]:
    """Canonicalise; raise naming the first SMILES RDKit cannot parse."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    out = []
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s) if isinstance(s, str) and s else None
        if mol is None:
            raise ValueError(f"{where}[{i}]: invalid SMILES {s!r}")
        out.append(Chem.MolToSmiles(mol))
    return out


class ChemNet:
    """The pretrained ChemNet of fcd-torch, kept on ``device``: penultimate activations [B, 512].

    (fcd-torch's own ``get_predictions``/``calculate_frechet_distance`` call ``np.row_stack`` and
    ``sqrtm(disp=...)``, which newer NumPy/SciPy removed; the network and tokenizer are reused.)
    """

    dim = CHEMNET_DIM

    def __init__(self, device: str = "cpu", batch_size: int = 512, model_path: str | None = None):
        self.model = load_fcd("cpu", model_path=model_path).model.to(device).eval()
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def activations(self, smiles: Sequence[str], where: str = "smiles") -> np.ndarray:
        from fcd_torch.utils import SmilesDataset

        smiles = check_smiles(smiles, where)
        if not smiles:
            return np.zeros((0, self.dim), np.float32)
        loader = torch.utils.data.DataLoader(
            SmilesDataset(smiles, canonize=False), batch_size=self.batch_size
        )
        out = [self.model(b.transpose(1, 2).float().to(self.device)).float().cpu().numpy() for b in loader]
        return np.concatenate(out, 0)

    def stats(self, smiles: Sequence[str]) -> dict[str, np.ndarray]:
        act = self.activations(smiles).astype(np.float64)
        return {"mu": act.mean(0), "sigma": np.cov(act.T)}


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Frechet distance of two Gaussians)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
        covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class ChemNetEncoder:
    """``encode(smiles [B]) -> z [B, 512]`` with the pretrained ChemNet."""

    dim = CHEMNET_DIM

    def __init__(self, device: str = "cpu", batch_size: int = 512):
        self.net = ChemNet(device, batch_size)

    def __call__(self, smiles: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.net.activations(smiles))


class DescriptorEncoder:
    """RDKit 2-D descriptors (``Descriptors.descList``), standardised with given statistics."""

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        from rdkit.Chem import Descriptors

        self.functions = [fn for _, fn in Descriptors.descList]
        self.dim = len(self.functions)
        self.mean, self.std = mean, std

    def raw(self, smiles: Sequence[str]) -> np.ndarray:
        from rdkit import Chem

        smiles = check_smiles(smiles)
        out = np.zeros((len(smiles), self.dim), np.float64)
        for i, s in enumerate(smiles):
            mol = Chem.MolFromSmiles(s)
            for k, fn in enumerate(self.functions):
                try:
                    out[i, k] = fn(mol)
                except Exception:  # noqa: BLE001 - a few descriptors fail on tiny molecules
                    out[i, k] = np.nan
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)

    def fit(self, smiles: Sequence[str]) -> DescriptorEncoder:
        raw = self.raw(smiles)
        self.mean, self.std = raw.mean(0), raw.std(0) + 1e-6
        return self

    def __call__(self, smiles: Sequence[str]) -> torch.Tensor:
        if self.mean is None:
            raise RuntimeError("DescriptorEncoder: call fit() on the training SMILES first")
        z = np.clip((self.raw(smiles) - self.mean) / self.std, -10, 10)
        return torch.from_numpy(z.astype(np.float32))


class MorganEncoder:
    """Morgan count fingerprint (radius 2, 2048 bits) as ``log1p(counts)``."""

    dim = MORGAN_BITS

    def __call__(self, smiles: Sequence[str]) -> torch.Tensor:
        from rdkit import Chem
        from rdkit.Chem import rdFingerprintGenerator

        gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=MORGAN_BITS)
        smiles = check_smiles(smiles)
        out = np.stack([gen.GetCountFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles])
        return torch.from_numpy(np.log1p(out.astype(np.float32)))


class UniMolEncoder:
    """Uni-Mol global embedding (CLS token, 512-d) through ``unimol_tools.UniMolRepr``."""

    dim = 512

    def __init__(self, vocab, device: str = "cpu", remove_hs: bool = False):
        self.vocab = vocab
        try:
            from unimol_tools import UniMolRepr
        except ImportError as err:
            raise ImportError(
                "target 'unimol' needs the package 'unimol_tools' (pip install unimol_tools) and "
                "network access for its weights; offline, train a 3-D encoder with "
                "`python -m reed_molecule.pretrain_encoder` and use target 'checkpoint:PATH'"
            ) from err
        self.repr = UniMolRepr(
            data_type="molecule", remove_hs=remove_hs, use_gpu=str(device).startswith("cuda")
        )

    def __call__(self, molecules: Sequence[tuple]) -> torch.Tensor:
        atoms = [[self.vocab.atoms[i] for i in a] for _, a, _, _ in molecules]
        coords = [np.asarray(x, np.float64) for x, _, _, _ in molecules]
        out = self.repr.get_repr({"atoms": atoms, "coordinates": coords}, return_atomic_reprs=False)
        return torch.as_tensor(
            np.asarray(out["cls_repr"] if isinstance(out, dict) else out), dtype=torch.float32
        )


class CheckpointEncoder3D:
    """A 3-D encoder saved by :mod:`reed_molecule.pretrain_encoder`: ``z = mean_i s_i`` (masked)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from reed_molecule.pretrain_encoder import load_encoder

        self.model, self.vocab = load_encoder(path, device)
        self.device = device
        self.dim = self.model.hidden_dim

    @torch.no_grad()
    def __call__(self, molecules: Sequence[tuple]) -> torch.Tensor:
        from reed_molecule.pretrain_encoder import embed

        return embed(self.model, molecules, self.device).cpu()


TARGET_KINDS = ("chemnet", "descriptors", "morgan", "unimol", "checkpoint:PATH")


def make_encoder(kind: str, device: str = "cpu", train_smiles: Sequence[str] | None = None, vocab=None):
    """Returns ``(encode, dim, input)`` where ``input`` is ``"smiles"`` or ``"molecule"``."""
    if kind == "chemnet":
        enc = ChemNetEncoder(device)
        return enc, enc.dim, "smiles"
    if kind == "descriptors":
        if train_smiles is None:
            raise ValueError("target 'descriptors': needs training SMILES to standardise")
        enc = DescriptorEncoder().fit(train_smiles)
        return enc, enc.dim, "smiles"
    if kind == "morgan":
        return MorganEncoder(), MORGAN_BITS, "smiles"
    if kind == "unimol":
        enc = UniMolEncoder(vocab, device)
        return enc, enc.dim, "molecule"
    if kind.startswith("checkpoint:"):
        enc = CheckpointEncoder3D(kind.split(":", 1)[1], device)
        return enc, enc.dim, "molecule"
    raise ValueError(f"--target: unknown {kind!r}; choose one of {TARGET_KINDS}")


def build_target_store(
    arrays: MoleculeArrays,
    kind: str,
    out: str | Path,
    rows: np.ndarray | None = None,
    device: str = "cpu",
    batch_size: int = 512,
    overwrite: bool = False,
):
    """Encode ``rows`` of ``arrays`` once; a FeatureStore keyed by ``str(mol_id)``, 1 row each."""
    from reed_core.features import build_feature_store

    rows = np.arange(len(arrays)) if rows is None else np.asarray(rows)
    train_smiles = [arrays.smiles[i] for i in arrays.splits.get("train", rows)]
    encode, dim, kind_in = make_encoder(kind, device, train_smiles, arrays.vocab)

    def batches():
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            ids = [str(int(arrays.mol_id[i])) for i in chunk]
            if kind_in == "smiles":
                yield ids, [arrays.smiles[i] for i in chunk]
            else:
                yield ids, [arrays.get(int(i)) for i in chunk]

    encode_fn: Callable = lambda inputs: encode(inputs)[:, None, :]  # noqa: E731 - [B, 1, D]
    return build_feature_store(
        encode_fn,
        batches(),
        out,
        name=kind.split(":")[0],
        shape=(dim,),
        dtype="float16",
        total=-(-len(rows) // batch_size),
        overwrite=overwrite,
    )


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Precompute alignment targets into a FeatureStore.")
    p.add_argument("--data", required=True, help="MoleculeArrays .npz")
    p.add_argument("--target", required=True, help=f"one of {TARGET_KINDS}")
    p.add_argument("--out", required=True, help="FeatureStore folder")
    p.add_argument("--split", default="train", help="split to encode, or 'all'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    arrays = MoleculeArrays.load(args.data)
    rows = None if args.split == "all" else arrays.split(args.split)
    store = build_target_store(
        arrays, args.target, args.out, rows, args.device, args.batch_size, args.overwrite
    )
    print(f"{args.target}: {len(store)} molecules -> {args.out} (dim {store.meta.shape[0]})")


if __name__ == "__main__":
    main()
