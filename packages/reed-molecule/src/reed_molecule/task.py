"""The molecule domain's side of reed-core's ``Task`` protocol.

Per step: a batch of molecules with an OT-aligned prior sample (CPU, a pure function of the
step), ``x_tau`` and masked tokens at ``tau ~ p(tau)``, one forward of
:class:`reed_core.model.ReedModel` (the denoiser plus masked-mean-pooled taps projected onto each
target ``z_k``), and the REED objective

    L = w_diff(p) mean_b L_gen[b] + sum_k w_align_k(p) lambda_k mean_b alpha_k(tau_b) L_align_k[b]
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from reed_core.features import FeatureStore
from reed_core.objective import ObjectiveOutput
from reed_core.recipe import TargetConfig, assemble
from reed_core.train import seed_everything
from reed_molecule.chem import NUM_BOND_CLASSES
from reed_molecule.configs import MoleculeConfig
from reed_molecule.data.arrays import MoleculeArrays
from reed_molecule.data.batch import MoleculeBatch, PaddedMolecules, training_sampler
from reed_molecule.models import build_network
from reed_molecule.objective import corrupt, per_sample_losses, sample_tau
from reed_molecule.sampling import AtomCountDistribution, sample_molecules


def build_denoiser(cfg: MoleculeConfig, vocab) -> nn.Module:
    """The network of ``cfg.model`` (``model.arch``: e3nn | semla) sized to ``vocab``."""
    model_cfg = replace(
        cfg.model,
        num_atom_types=len(vocab.atoms),
        num_charges=len(vocab.charges),
        num_bond_types=NUM_BOND_CLASSES,
    )
    return build_network(model_cfg)


STORE_WAIT_S = 3600  # how long a rank other than 0 waits for rank 0 to build a target store


def encoder_device(cfg: MoleculeConfig) -> str:
    """Where a target encoder runs when its store is built for a run: the run's device."""
    device = cfg.train.device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def target_store_root(name: str, store: str, run_dir: str | Path) -> Path:
    """A target's store folder: ``store``, or ``RUN_DIR/features/<name>`` when ``store`` is empty."""
    return Path(store) if store else Path(run_dir) / "features" / name


def ensure_target_store(
    name: str, tcfg: TargetConfig, arrays: MoleculeArrays, rows: np.ndarray, run_dir: str | Path, device: str
) -> Path:
    """The target's store folder. With ``store`` empty it is ``RUN_DIR/features/<name>``, built
    here from ``rows`` with encoder ``tcfg.encoder`` (:func:`reed_molecule.targets.build_target_store`)
    unless it exists; a store set by path is only read (``python -m reed_molecule.targets``
    builds it). Under torchrun, rank 0 builds and the other ranks wait for it."""
    root = target_store_root(name, tcfg.store, run_dir)
    if tcfg.store or (root / "meta.json").is_file():
        return root
    if int(os.environ.get("RANK", "0")) > 0:
        deadline = time.monotonic() + STORE_WAIT_S
        while not (root / "meta.json").is_file():
            if time.monotonic() > deadline:
                raise TimeoutError(f"reed.targets.{name}: rank 0 did not build {root} in {STORE_WAIT_S} s")
            time.sleep(2)
        return root
    from reed_molecule.targets import TARGET_KINDS, build_target_store

    if tcfg.encoder not in TARGET_KINDS and not tcfg.encoder.startswith("checkpoint:"):
        raise ValueError(
            f"reed.targets.{name}.encoder: {tcfg.encoder!r} cannot build a store; with store empty it "
            f"must be one of {TARGET_KINDS}"
        )
    print(f"reed.targets.{name}: building the {tcfg.encoder} store of {len(rows)} molecules in {root}")
    build_target_store(arrays, tcfg.encoder, root, rows, device, overwrite=True)
    return root


def load_target_table(store_path: str, mol_ids: np.ndarray, name: str, dim: int = 0) -> torch.Tensor:
    """``z [M, D]`` (float16) in the order of ``mol_ids``, read from a FeatureStore (``dim``: the
    expected ``D``; 0 takes the store's)."""
    if not store_path:
        raise ValueError(
            f"reed.targets.{name}.store: not set; build a store with python -m reed_molecule.targets"
        )
    store = FeatureStore.open(store_path)
    if len(store.meta.shape) != 1 or (dim and store.meta.shape != (dim,)):
        raise ValueError(
            f"reed.targets.{name}.dim: is {dim}, but store {store_path} holds vectors of shape "
            f"{store.meta.shape}"
        )
    missing = [int(i) for i in mol_ids[:100000] if str(int(i)) not in store]
    if missing:
        raise ValueError(
            f"reed.targets.{name}.store: {store_path} has no entry for molecule id "
            f"{missing[0]} ({len(missing)} missing); rebuild it for this split"
        )
    z = np.stack([np.asarray(store.example(str(int(i))))[0] for i in mol_ids])
    return torch.from_numpy(z.astype(np.float16))


class MoleculeTask:
    def __init__(self, cfg: MoleculeConfig, arrays: MoleculeArrays | None = None):
        self.cfg = cfg
        seed_everything(cfg.train.seed)
        arrays = arrays if arrays is not None else MoleculeArrays.load(cfg.data.path)
        self.vocab = arrays.vocab
        rows = arrays.training_rows(cfg.data.train_split, cfg.data.limit)
        self.train = PaddedMolecules(arrays, rows)
        self.train_smiles = {arrays.smiles[i] for i in rows}
        eval_rows = arrays.splits.get(cfg.data.eval_split, np.zeros(0, np.int64))
        self.ref_smiles = [arrays.smiles[i] for i in eval_rows]
        self.atom_counts = AtomCountDistribution(self.train.num_atoms)
        self.num_classes = (len(self.vocab.atoms), len(self.vocab.charges), NUM_BOND_CLASSES)

        denoiser = build_denoiser(cfg, self.vocab)
        targets = cfg.reed.enabled
        store_rows = arrays.split(cfg.data.train_split)  # the whole split: valid for any data.limit
        self.z_tables = {}
        for name, t in targets.items():
            store = ensure_target_store(name, t, arrays, store_rows, cfg.train.run_dir, encoder_device(cfg))
            self.z_tables[name] = load_target_table(str(store), self.train.mol_id, name, t.dim)
        self._z_on_device: dict[str, torch.Tensor] = {}
        recipe = assemble(
            denoiser,
            cfg.reed,
            target_dims={name: table.shape[1] for name, table in self.z_tables.items()},
            hidden_dims={name: denoiser.hidden_dim for name in targets},
        )
        self.model, self.targets = recipe.model, recipe.targets
        self.curriculum, self.objective = recipe.curriculum, recipe.objective
        d, t = cfg.data, cfg.train
        n_atoms = self.train.num_atoms
        self.sampler = training_sampler(d.batching, n_atoms, t.batch_size, t.seed, d.bucket_chunk)
        self.steps_per_epoch = self.sampler.steps_per_epoch

    def state_dict(self) -> dict:
        """What sampling needs without the data: atom-count histogram and vocabulary."""
        return {"atom_counts": self.atom_counts.state_dict(), "vocab": self.vocab.name}

    def load_state_dict(self, state: dict) -> None:
        if state.get("vocab", self.vocab.name) != self.vocab.name:
            raise ValueError(f"checkpoint vocabulary {state['vocab']!r} != data {self.vocab.name!r}")

    # -- Task protocol ---------------------------------------------------------------------------
    def batch(self, step: int, rank: int, world: int, device: torch.device) -> MoleculeBatch:
        idx = self.sampler.indices(step, rank, world)
        rng = np.random.default_rng([self.cfg.train.seed, step, rank])
        b = self.train.batch(idx, rng, self.cfg.flow.prior_sigma, self.cfg.flow.ot)
        return b.to(device)

    def z_targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, table in self.z_tables.items():
            if name not in self._z_on_device or self._z_on_device[name].device != index.device:
                self._z_on_device[name] = table.to(index.device)
            out[name] = self._z_on_device[name][index].float()  # [B, D]
        return out

    def loss(self, model: nn.Module, batch: MoleculeBatch, step: int) -> ObjectiveOutput:
        cfg = self.cfg
        tau = sample_tau(len(batch), cfg.flow.tau_sampling, batch.x0.device)
        noisy = corrupt(batch, tau, self.num_classes)
        args = (noisy.x, noisy.a, noisy.c, noisy.e, batch.mask, tau)
        self_cond = None
        if cfg.model.self_condition and random.Random(cfg.train.seed * 1_000_003 + step).random() < 0.5:
            with torch.no_grad():
                (x0, a, c, e), _ = model(*args, tau=tau)
                self_cond = (x0.detach(), a.softmax(-1), c.softmax(-1), e.softmax(-1))
        z = self.z_targets(batch.index) if self.z_tables else None
        masks = {name: batch.mask for name in self.z_tables}
        pred, align = model(*args, self_cond, tau=tau, z_targets=z, align_masks=masks)
        parts = per_sample_losses(pred, batch)
        f = cfg.flow
        gen = (
            f.lambda_x * parts["x"]
            + f.lambda_a * parts["a"]
            + f.lambda_c * parts["c"]
            + f.lambda_e * parts["e"]
        )  # [B]
        out = self.objective(gen, align, self.curriculum.progress(step, self.steps_per_epoch))
        out.terms.update({f"loss_{k}": v.mean().detach() for k, v in parts.items()})
        return out

    # -- evaluation ------------------------------------------------------------------------------
    def sample(self, denoiser: nn.Module, num: int, steps: int, seed: int = 0, batch_size: int = 512):
        device = next(denoiser.parameters()).device
        counts = self.atom_counts.sample(num, np.random.default_rng(seed))
        return sample_molecules(
            denoiser,
            counts,
            steps,
            self.num_classes,
            self.cfg.flow.prior_sigma,
            seed=seed,
            device=device,
            batch_size=batch_size,
        )

    def evaluate(self, model: nn.Module, ema_model: nn.Module, step: int, run_dir) -> dict:
        from reed_molecule.metrics import evaluate_molecules, rdkit_available, valid_smiles_of
        from reed_molecule.sampling import save_npz

        e = self.cfg.eval
        net = (ema_model if e.use_ema else model).denoiser
        was_training = net.training
        mols = self.sample(net, e.num_samples, e.sample_steps, seed=step, batch_size=e.batch_size)
        net.train(was_training)
        samples = Path(run_dir) / "samples"  # scored again elsewhere: evaluate --npz FILE
        samples.mkdir(parents=True, exist_ok=True)
        save_npz(mols, self.vocab, samples / f"step_{step}.npz")
        out = evaluate_molecules(mols, self.vocab, self.train_smiles, mmff=e.mmff, mmff_max=e.mmff_max)
        if e.fcd and len(self.ref_smiles) > 1 and rdkit_available():
            out["fcd"] = self.fcd(valid_smiles_of(mols, self.vocab), str(next(net.parameters()).device))
            # FCD's ChemNet is also the alignment target of this run: flag it next to the number
            out["fcd_chemnet_is_target"] = float("chemnet" in self.cfg.reed.enabled)
        path = Path(run_dir) / "eval.jsonl"
        with open(path, "a") as fh:
            fh.write(json.dumps({"step": step, **out}) + "\n")
        return out

    def fcd(self, smiles: list[str], device: str) -> float:
        """FCD to the eval split; ChemNet and the reference statistics are loaded once."""
        from reed_molecule.metrics import frechet_chemnet_distance
        from reed_molecule.targets import ChemNet

        if getattr(self, "_chemnet", None) is None:
            self._chemnet = ChemNet(device)
            self._fcd_ref = self._chemnet.stats(self.ref_smiles)
        return frechet_chemnet_distance(smiles, self._fcd_ref, chemnet=self._chemnet)
