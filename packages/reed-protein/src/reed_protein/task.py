"""The protein domain's side of reed-core's ``Task`` protocol: data, targets, loss, evaluation.

One training step (``ProteinTask.loss``):

    tau ~ U[tau_min, 1] (stratified),  x_tau ~ q(. | S),  X~ = X + backbone noise
    logits, {L_align_k} = model(X~, x_tau, tau)                  (taps + projectors, reed-core)
    L = w_diff(epoch) * mean_b L_gen[b] + sum_k w_align_k(epoch) lambda_k mean_b alpha_k L_align_k[b]

The kNN graph is built once on the clean backbone and given to the model, so per-edge targets sit
on exactly the model's edges.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from reed_core.cli import UserError
from reed_core.objective import ObjectiveOutput
from reed_core.recipe import TargetConfig, assemble
from reed_protein.configs import DataConfig, ProteinConfig
from reed_protein.data.batch import ProteinBatch, collate, token_batches
from reed_protein.data.datasets import (
    EXACT_MAX,
    ChainFilter,
    cluster_split,
    load_cath,
    load_directory,
    load_offline,
    load_proteins,
    save_proteins,
)
from reed_protein.data.structure import Protein
from reed_protein.models.graph import knn_graph
from reed_protein.models.mpnn import DiffusionMPNN
from reed_protein.objective import corrupt, diffusion_loss, sample_tau

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- data


def load_data(
    cfg: DataConfig, sources: Sequence[str] | None = None, download_dir: str | None = None
) -> dict[str, list[Protein]]:
    """``{"train", "validation", "test"} -> proteins`` for the configured source. For
    ``offline``: the sources named (default: every one found) and the folder of downloaded ones
    (``reed_protein.data.sources``)."""
    chain_filter = ChainFilter(cfg.min_length, cfg.max_length)
    if sources is None and cfg.sources:
        sources = list(cfg.sources)
    if cfg.source == "cath":
        return load_cath(cfg.path, cfg.splits, chain_filter)
    if cfg.source == "npz" or (cfg.source == "offline" and Path(cfg.cache).exists()):
        path = cfg.path if cfg.source == "npz" else cfg.cache
        pset = load_proteins(path)
        built_from = pset.meta.get("sources", "all found") if isinstance(pset.meta, dict) else "all found"
        if cfg.source == "offline" and sources is not None and built_from != list(sources):
            raise UserError(
                f"data.cache: {path} was built from the offline sources {built_from}, not "
                f"data.sources={list(sources)}; delete it or give another data.cache"
            )
        keep = {p.name for p in pset.proteins if chain_filter.accepts(p)}
        if not pset.split:
            raise ValueError(f"{path}: holds no train/validation/test split")
        return {s: [p for p in pset.subset(s) if p.name in keep] for s in pset.split}
    proteins = (
        load_offline(chain_filter, sources, download_dir)
        if cfg.source == "offline"
        else load_directory(cfg.path, chain_filter)
    )
    split = cluster_split(proteins, cfg.identity, seed=cfg.split_seed)
    if cfg.source == "offline":
        Path(cfg.cache).parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "identity": cfg.identity,
            "split_seed": cfg.split_seed,
            "rule": "single-linkage clusters at semi-global sequence identity >= identity"
            if len(proteins) <= EXACT_MAX
            else "single-linkage clusters of MMseqs2 pairs, identical residues >= identity x shorter chain",
            "sources": list(sources) if sources is not None else "all found",
        }
        save_proteins(cfg.cache, proteins, split, meta)
    index = {p.name: p for p in proteins}
    return {s: [index[n] for n in names] for s, names in split.items()}


@dataclass
class TrainBatch:
    protein: ProteinBatch
    E_idx: torch.Tensor  # [B, L, K] kNN graph of the clean backbone
    edge_mask: torch.Tensor  # [B, L, K]
    z: dict[str, torch.Tensor]  # per-residue [B, L, D] or per-edge [B, L*K, D]
    z_masks: dict[str, torch.Tensor]  # [B, L] or [B, L, K]


# ------------------------------------------------------------------------------- targets


class TargetSource:
    """``z`` for a batch: from a precomputed feature store (loaded once onto the device) or from a
    frozen encoder run online, for each target ``{name: TargetConfig}``."""

    def __init__(self, targets: Mapping[str, TargetConfig]):
        self.targets = dict(targets)
        self._encoders: dict[tuple[str, str], nn.Module] = {}
        self._stores: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def dim(t: TargetConfig) -> int:
        """Width of ``z``: ``dim`` where set, else read from the store or the encoder."""
        if t.dim:
            return t.dim
        if t.store:
            from reed_core.features import FeatureStore

            return int(FeatureStore.open(t.store).meta.shape[-1])
        if t.encoder == "proteinmpnn":
            return 128
        from reed_protein.targets import ESM2Targets

        return ESM2Targets.from_pretrained(t.checkpoint).dim

    def _encoder(self, t: TargetConfig, device: torch.device) -> nn.Module:
        key = (t.encoder, t.checkpoint)
        if key not in self._encoders:
            from reed_protein.targets import ESM2Targets, ProteinMPNNTargets

            enc = (
                ProteinMPNNTargets(t.checkpoint)
                if t.encoder == "proteinmpnn"
                else ESM2Targets.from_pretrained(t.checkpoint)
            )
            self._encoders[key] = enc.to(device)
        return self._encoders[key]

    def _store(self, name: str, t: TargetConfig, device: torch.device) -> dict[str, torch.Tensor]:
        if name not in self._stores:
            from reed_core.features import FeatureStore

            store = FeatureStore.open(t.store)
            self._stores[name] = {
                i: torch.from_numpy(np.array(store.example(i))).to(device) for i in store.ids
            }
        return self._stores[name]

    @torch.no_grad()
    def __call__(
        self, proteins: Sequence[Protein], batch: ProteinBatch, E_idx: torch.Tensor, edge_mask: torch.Tensor
    ) -> tuple[dict, dict]:
        device = batch.X.device
        B, L, K = E_idx.shape
        z, masks, online = {}, {}, {}
        for name, t in self.targets.items():
            if t.store:
                table = self._store(name, t, device)
                missing = [p.name for p in proteins if p.name not in table]
                if missing:
                    raise KeyError(f"feature store {t.store}: no entry for {missing[:3]}")
                first = table[proteins[0].name]
                shape = (K, first.shape[-1]) if t.feature == "pair" else first.shape[1:]
                if t.feature == "pair" and first.shape[1] < K:
                    raise ValueError(
                        f"feature store {t.store}: holds {first.shape[1]} edges per "
                        f"residue, the model uses k_neighbors={K}"
                    )
                z_t = torch.zeros(B, L, *shape, device=device, dtype=torch.float32)
                for b, p in enumerate(proteins):
                    z_b = table[p.name]
                    z_t[b, : len(p)] = (z_b[:, :K] if t.feature == "pair" else z_b).float()
            else:
                key = (t.encoder, t.checkpoint)
                if key not in online:
                    enc = self._encoder(t, device)
                    online[key] = enc(batch, E_idx) if t.encoder == "proteinmpnn" else enc(proteins, L)
                z_t = online[key][t.feature].float()
            if t.feature == "pair":
                m = edge_mask.bool() & (z_t.abs().sum(-1) > 0)  # [B, L, K]
                z[name], masks[name] = z_t.reshape(B, L * K, -1), m
            else:
                z[name], masks[name] = z_t, batch.mask.bool()
        return z, masks


# ------------------------------------------------------------------------------- task


class ProteinTask:
    def __init__(self, cfg: ProteinConfig, data: dict[str, list[Protein]]):
        self.cfg = cfg
        self.train_set = data["train"]
        if not self.train_set:
            raise ValueError("no training proteins (check data.* and the length filter)")
        self.eval_sets = {s: data[s] for s in cfg.eval.splits if data.get(s)}
        self.batches = token_batches([len(p) for p in self.train_set], cfg.data.max_tokens)
        self.steps_per_epoch = len(self.batches)
        denoiser = DiffusionMPNN(cfg.model)
        self.sources = TargetSource(cfg.reed.enabled)
        dims = {name: self.sources.dim(t) for name, t in self.sources.targets.items()}
        recipe = assemble(denoiser, cfg.reed, target_dims=dims)
        self.model, self.curriculum, self.objective = recipe.model, recipe.curriculum, recipe.objective

    @property
    def steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch if self.cfg.epochs else self.cfg.train.steps

    def batch_indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(self.steps_per_epoch)
        return self.batches[order[i]]

    def make_batch(self, proteins: Sequence[Protein], device: torch.device) -> TrainBatch:
        batch = collate(proteins).to(device, non_blocking=True)
        E_idx, edge_mask = knn_graph(batch.X[:, :, 1], batch.mask, self.cfg.model.k_neighbors)
        z, masks = self.sources(proteins, batch, E_idx, edge_mask) if self.sources.targets else ({}, {})
        return TrainBatch(batch, E_idx, edge_mask, z, masks)

    def batch(self, step: int, rank: int, world: int, device: torch.device) -> TrainBatch:
        idx = self.batch_indices(step)
        idx = idx[rank::world] if len(idx) >= world else idx[rank % len(idx) :][:1]
        return self.make_batch([self.train_set[i] for i in idx], device)

    def loss(self, model: nn.Module, batch: TrainBatch, step: int) -> ObjectiveOutput:
        pb = batch.protein
        device = pb.X.device
        tau = sample_tau(len(pb), self.cfg.diffusion, device)
        x_tau, masked = corrupt(pb.S, pb.known, tau)
        X = pb.X + self.cfg.model.backbone_noise * torch.randn_like(pb.X)
        logits, align = model(
            X,
            x_tau,
            tau,
            pb.mask,
            pb.residue_index,
            pb.chain_labels,
            pb.segment,
            batch.E_idx,
            tau=tau,
            z_targets=batch.z or None,
            align_masks=batch.z_masks,
        )
        gen_loss = diffusion_loss(logits, pb.S, masked, pb.known, tau)
        progress = self.curriculum.progress(step, self.steps_per_epoch)
        out = self.objective(gen_loss, align, progress)
        hits = ((logits.argmax(-1) == pb.S) & masked).sum().float()
        out.terms["train_acc_masked"] = hits / masked.sum().clamp_min(1)
        return out

    # --------------------------------------------------------------------------- evaluation

    def evaluate(self, model: nn.Module, ema: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        device = next(model.parameters()).device
        out: dict[str, float] = {"epoch": step / self.steps_per_epoch}
        from reed_protein.evaluate import evaluate_model

        e = self.cfg.eval
        for split, proteins in self.eval_sets.items():
            for weights in e.weights:
                m = ema if weights == "ema" else model
                res = evaluate_model(m.denoiser, proteins, e.sampler, 1, e.num_tau, e.max_tokens, device)
                tag = "" if weights == "ema" else "raw/"
                out.update({f"{tag}{split}/{k}": v for k, v in res.items() if k != "per_chain"})
        model.train()
        return out


def resolve(cfg: ProteinConfig, task: ProteinTask) -> ProteinConfig:
    """Fill ``train.steps`` and ``train.eval_every`` from the epoch budget."""
    steps = task.steps
    every = cfg.eval.every_epochs * task.steps_per_epoch
    return replace(cfg, train=replace(cfg.train, steps=steps, eval_every=every))


def write_split(run_dir: str | Path, data: dict[str, list[Protein]]) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "split.json").write_text(
        json.dumps({s: [p.name for p in ps] for s, ps in data.items()}, indent=1)
    )
