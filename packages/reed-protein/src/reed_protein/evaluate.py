"""Evaluate trained checkpoints, and the pretrained ProteinMPNN as a reference, on held-out chains.

    python -m reed_protein.evaluate --data offline.npz --split test --checkpoint runs/protein/reed \\
        --proteinmpnn v_48_020 --num 4 --steps 50 -o results.json

For each model: sequence recovery (pooled over residues and mean over chains) of ``--num`` designs
per chain at ``--temperature``, and for our models the perplexity bound. ProteinMPNN samples
autoregressively in a random order (its own sampler, ``X`` never sampled). ``--refold`` adds
ESMFold refolding RMSD and pLDDT where ESMFold is available (skipped with a message otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from reed_core.cli import main_guard
from reed_protein.data.batch import collate, token_batches
from reed_protein.data.datasets import load_proteins
from reed_protein.data.residues import decode
from reed_protein.data.structure import Protein
from reed_protein.metrics import ESMFold, ESMFoldUnavailable, nelbo, perplexity, recovery
from reed_protein.models.mpnn import DiffusionMPNN
from reed_protein.sample import SamplerConfig, sample


@torch.no_grad()
def evaluate_model(
    denoiser: DiffusionMPNN,
    proteins: Sequence[Protein],
    cfg: SamplerConfig,
    num_designs: int = 1,
    num_tau: int = 4,
    max_tokens: int = 12000,
    device: str | torch.device = "cpu",
    seed: int = 0,
    return_designs: bool = False,
) -> dict:
    denoiser.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    per_chain, nel, counts, designs_out = {}, [], [], {}
    matches = residues = 0
    for idx in token_batches([len(p) for p in proteins], max_tokens):
        chunk = [proteins[i] for i in idx]
        batch = collate(chunk).to(device)
        d = sample(denoiser, batch, cfg, num_designs, generator=g)
        S_true = batch.S.repeat_interleave(num_designs, 0)
        known = batch.known.repeat_interleave(num_designs, 0)
        rec = recovery(d.S, S_true, known).view(len(chunk), num_designs)
        matches += int(((d.S == S_true) & known).sum())
        residues += int(known.sum())
        for b, p in enumerate(chunk):
            per_chain[p.name] = float(rec[b].mean())
            if return_designs:
                designs_out[p.name] = [
                    decode(d.S[b * num_designs + j, : len(p)].cpu()) for j in range(num_designs)
                ]
        nel.append(nelbo(denoiser, batch, num_tau, seed))
        counts.append(batch.known.sum(1))
    out = {
        "recovery": matches / max(residues, 1),
        "recovery_mean": float(np.mean(list(per_chain.values()))),
        "perplexity": perplexity(torch.cat(nel), torch.cat(counts)),
        "per_chain": per_chain,
    }
    if return_designs:
        out["designs"] = designs_out
    return out


@torch.no_grad()
def evaluate_proteinmpnn(
    proteins: Sequence[Protein],
    weights: str = "v_48_020",
    temperature: float = 0.1,
    num_designs: int = 1,
    max_tokens: int = 12000,
    device: str | torch.device = "cpu",
    seed: int = 0,
    return_designs: bool = False,
) -> dict:
    """Recovery of the pretrained ProteinMPNN (its autoregressive sampler, random order)."""
    from reed_protein.targets import ProteinMPNNTargets

    net = ProteinMPNNTargets(weights).net.to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)  # ProteinMPNN's sampler draws with torch.multinomial
    omit = np.zeros(21, dtype=np.float32)
    omit[20] = 1.0  # never sample X
    per_chain, designs_out = {}, {}
    matches = residues = 0
    for idx in token_batches([len(p) for p in proteins], max_tokens):
        chunk = [proteins[i] for i in idx]
        batch = collate(chunk).to(device)
        a = ProteinMPNNTargets.inputs(batch)
        B, L = batch.S.shape
        recs = torch.zeros(B, num_designs, device=device)
        for j in range(num_designs):
            randn = torch.randn(B, L, device=device, generator=g)
            out = net.sample(
                a["X"],
                randn,
                batch.S,
                a["mask"],
                a["chain_encoding_all"],
                a["residue_idx"],
                mask=a["mask"],
                temperature=temperature,
                omit_AAs_np=omit,
                bias_AAs_np=np.zeros(21, dtype=np.float32),
                chain_M_pos=a["mask"],
                bias_by_res=torch.zeros(B, L, 21, device=device),
            )
            S = out["S"]
            known = batch.known
            recs[:, j] = recovery(S, batch.S, known)
            matches += int(((S == batch.S) & known).sum())
            residues += int(known.sum())
            if return_designs:
                for b, p in enumerate(chunk):
                    designs_out.setdefault(p.name, []).append(decode(S[b, : len(p)].cpu()))
        for b, p in enumerate(chunk):
            per_chain[p.name] = float(recs[b].mean())
    out = {
        "recovery": matches / max(residues, 1),
        "recovery_mean": float(np.mean(list(per_chain.values()))),
        "per_chain": per_chain,
    }
    if return_designs:
        out["designs"] = designs_out
    return out


def refold_designs(designs: dict[str, list[str]], proteins: Sequence[Protein], fold: ESMFold) -> dict:
    """ESMFold CA RMSD and pLDDT of each chain's first design."""
    out = {}
    for p in proteins:
        r = fold.refold(designs[p.name][0], p.X[:, 1])
        out[p.name] = {"rmsd": r.rmsd, "plddt": r.plddt}
    return {
        "rmsd_mean": float(np.mean([v["rmsd"] for v in out.values()])),
        "plddt_mean": float(np.mean([v["plddt"] for v in out.values()])),
        "per_chain": out,
    }


@main_guard
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m reed_protein.evaluate",
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="protein set (.npz from save_proteins)")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a trained checkpoint or run folder (repeatable; NAME= optional)",
    )
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema")
    parser.add_argument(
        "--proteinmpnn",
        default=None,
        metavar="WEIGHTS",
        help="also evaluate the pretrained ProteinMPNN (e.g. v_48_020)",
    )
    parser.add_argument("--num", type=int, default=1, help="designs per chain")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--order", choices=("random", "confidence"), default="random")
    parser.add_argument("--refold", action="store_true", help="ESMFold RMSD / pLDDT if available")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-o", "--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    from reed_protein.cli import CLIError, load_denoiser

    try:
        proteins = load_proteins(args.data).subset(args.split)
    except (KeyError, ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    cfg = SamplerConfig(steps=args.steps, temperature=args.temperature, order=args.order)
    results: dict = {
        "split": args.split,
        "chains": len(proteins),
        "residues": int(sum(len(p) for p in proteins)),
        "num_designs": args.num,
        "temperature": args.temperature,
        "models": {},
    }
    for spec in args.checkpoint:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).name
        try:
            model = load_denoiser(path, args.weights, args.device)
        except CLIError as err:
            sys.exit(f"error: --checkpoint {path}: {err}")
        res = evaluate_model(
            model, proteins, cfg, args.num, device=args.device, seed=args.seed, return_designs=args.refold
        )
        results["models"][name] = res
    if args.proteinmpnn:
        results["models"]["proteinmpnn"] = evaluate_proteinmpnn(
            proteins,
            args.proteinmpnn,
            args.temperature,
            args.num,
            device=args.device,
            seed=args.seed,
            return_designs=args.refold,
        )
    if args.refold:
        try:
            fold = ESMFold(args.device)
        except ESMFoldUnavailable as err:
            print(f"refolding: {err}", file=sys.stderr)
            results["refold_skipped"] = str(err)
            fold = None
        for res in results["models"].values():
            designs = res.pop("designs")
            if fold is not None:
                res["refold"] = refold_designs(designs, proteins, fold)
    for name, res in results["models"].items():
        print(
            f"{name}: recovery {res['recovery']:.4f} (mean over chains "
            f"{res['recovery_mean']:.4f})"
            + (f", perplexity {res['perplexity']:.3f}" if "perplexity" in res else "")
        )
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
