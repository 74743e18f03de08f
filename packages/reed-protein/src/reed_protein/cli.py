"""``reed-protein design``: sequences for a backbone from a trained checkpoint, written as FASTA.

    reed-protein design 1abc.cif.gz --chain A --num 8 --temperature 0.1 -o designs.fasta \\
        --checkpoint runs/protein/reed/checkpoints/last.pt

Without ``--checkpoint`` the pretrained REED-small checkpoint that ships with the package is used
(``reed_protein/weights/reed_small.pt``; see the package README for how it was trained and its
held-out recovery).

The first record is the native sequence; then one record per design (per chain when several chains
are designed) with its score (mean -log p of the designed residues, lower is better) and its
recovery of the native sequence. ``--fix 1-10,25`` keeps those positions (1-based, in the order of
the written sequence) native.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from reed_core.cli import UserError, main_guard
from reed_protein.data.batch import collate
from reed_protein.data.residues import decode
from reed_protein.data.structure import read_structure
from reed_protein.models.mpnn import DiffusionMPNN
from reed_protein.pretrained import DEFAULT_DESCRIPTION, DEFAULT_WEIGHTS, is_design_checkpoint
from reed_protein.sample import SamplerConfig, sample


class CLIError(UserError, ValueError):
    """A bad flag or file of the command line (``error:`` line, exit status 2)."""


def load_denoiser(path: str | Path | None = None, weights: str = "ema", device: str = "cpu") -> DiffusionMPNN:
    """The trained denoiser of a reed-protein checkpoint: a training run's ``last.pt`` or its run
    folder, or a design checkpoint (:mod:`reed_protein.pretrained`); ``None``: the shipped one."""
    from reed_core.config import ConfigError, RenamedKeyError, config_from_dict
    from reed_core.train import CheckpointError, load_checkpoint
    from reed_protein.configs import ProteinConfig

    path = Path(DEFAULT_WEIGHTS if path is None else path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if weights not in ("ema", "raw"):
        raise CLIError(f"--weights: unknown {weights!r}; choose ema or raw")
    state = _design_checkpoint(path)
    try:
        state = state or load_checkpoint(path, map_location="cpu")
    except CheckpointError as err:
        raise CLIError(str(err)) from err
    try:
        cfg = config_from_dict(ProteinConfig, state.get("config", {}))
    except RenamedKeyError as err:
        raise CLIError(f"checkpoint {path}: its config uses keys of an older version: {err}") from err
    except ConfigError as err:
        raise CLIError(f"checkpoint {path}: not a reed-protein checkpoint ({err})") from err
    if is_design_checkpoint(state):
        if weights != state["weights"]:
            raise CLIError(
                f"checkpoint {path}: a design checkpoint that holds only the {state['weights']} weights; "
                f"use --weights {state['weights']}"
            )
        own = {k: v.float() if v.is_floating_point() else v for k, v in state["denoiser"].items()}
    else:
        params = state["ema" if weights == "ema" else "model"]
        prefix = "denoiser."
        own = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    model = DiffusionMPNN(cfg.model)
    try:
        model.load_state_dict(own)
    except RuntimeError as err:
        raise CLIError(f"checkpoint {path}: weights do not fit the model of its config ({err})") from err
    return model.eval().to(device)


def _design_checkpoint(path: Path) -> dict | None:
    """The contents of ``path`` if it is a design checkpoint (read with ``weights_only``), else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a training checkpoint (numpy RNG state), or not a checkpoint at all
        return None
    return state if is_design_checkpoint(state) else None


def parse_positions(text: str, length: int) -> torch.Tensor:
    """``"1-10,25"`` -> bool ``[length]`` (1-based, inclusive ranges)."""
    fixed = torch.zeros(length, dtype=torch.bool)
    if not text:
        return fixed
    for part in text.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
        except ValueError as err:
            raise CLIError(f"--fix: cannot read {part!r}; use e.g. 1-10,25") from err
        if not 1 <= a <= b <= length:
            raise CLIError(f"--fix: {part!r} is outside 1..{length}")
        fixed[a - 1 : b] = True
    return fixed


def check_device(device: str) -> None:
    """``--device`` names a device this machine has."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise CLIError(f"--device: unknown device {device!r}; use cpu or cuda (or cuda:N)") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(
                f"--device {device}: this machine has no usable CUDA device "
                "(torch.cuda.is_available() is false); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices here")


def design(args: argparse.Namespace) -> int:
    if args.num < 1:
        raise CLIError(f"--num: must be >= 1, got {args.num}")
    if args.steps < 1:
        raise CLIError(f"--steps: must be >= 1 (unmasking steps), got {args.steps}")
    if not args.temperature >= 0:  # also NaN
        raise CLIError(f"--temperature: must be >= 0 (0: the most likely residue), got {args.temperature}")
    check_device(args.device)
    chains = [c for part in args.chain for c in part.split(",") if c] if args.chain else None
    protein = read_structure(args.structure, chains)
    for note in protein.notes:
        print(f"note: {protein.name}: {note}", file=sys.stderr)
    if args.checkpoint is None:
        print(f"note: no --checkpoint: using {DEFAULT_DESCRIPTION}", file=sys.stderr)
    model = load_denoiser(args.checkpoint, args.weights, args.device)
    cfg = SamplerConfig(steps=args.steps, temperature=args.temperature, order=args.order)
    batch = collate([protein]).to(args.device)
    fixed = parse_positions(args.fix, len(protein))[None]
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    designs = sample(model, batch, cfg, num_designs=args.num, fixed=fixed, generator=g)
    native = protein.sequence
    chain_ids = protein.chain_id.tolist()
    order = protein.chains
    lines = [f">{protein.name} native chains={','.join(order)} length={len(protein)}"]
    lines += _wrap(native)
    for d in range(args.num):
        seq = decode(designs.S[d, : len(protein)].cpu())
        known = [i for i, c in enumerate(native) if c != "X"]
        rec = sum(seq[i] == native[i] for i in known) / max(len(known), 1)
        head = (
            f"design={d + 1} score={designs.score[d].item():.4f} recovery={rec:.4f} "
            f"T={args.temperature} order={args.order} steps={args.steps}"
        )
        if len(order) == 1:
            lines.append(f">{protein.name}_design{d + 1} {head} chain={order[0]}")
            lines += _wrap(seq)
        else:
            for chain in order:
                part = "".join(seq[i] for i, c in enumerate(chain_ids) if c == chain)
                lines.append(f">{protein.name}_design{d + 1}_{chain} {head} chain={chain}")
                lines += _wrap(part)
    text = "\n".join(lines) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(
            f"wrote {args.num} designs of {protein.name} ({len(protein)} residues) to {out}", file=sys.stderr
        )
    return 0


def _wrap(seq: str, width: int = 80) -> list[str]:
    return [seq[i : i + width] for i in range(0, len(seq), width)] or [""]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reed-protein", description="REED protein tools")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "design",
        help="design sequences for a backbone (writes FASTA)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("structure", help="PDB / mmCIF / BinaryCIF file (optionally .gz or .bz2)")
    d.add_argument(
        "--chain",
        action="append",
        default=[],
        help="chain id(s) to design, repeated or comma-separated (default: all)",
    )
    d.add_argument("--num", type=int, default=8, help="designs per structure (default 8)")
    d.add_argument("--temperature", type=float, default=0.1, help="sampling temperature")
    d.add_argument("--steps", type=int, default=50, help="unmasking steps")
    d.add_argument(
        "--order",
        choices=("random", "confidence"),
        default="random",
        help="which masked residues to reveal first",
    )
    d.add_argument("--fix", default="", help="positions kept native, e.g. 1-10,25 (1-based)")
    d.add_argument(
        "--checkpoint",
        default=None,
        help="a training run's folder or checkpoints/last.pt, or a design checkpoint "
        f"(default: {DEFAULT_DESCRIPTION.replace('%', '%%')}; reed_protein/weights/{DEFAULT_WEIGHTS.name})",
    )
    d.add_argument("--weights", choices=("ema", "raw"), default="ema")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    d.add_argument("-o", "--output", required=True, help="FASTA file to write ('-' for stdout)")
    return parser


@main_guard
def main(argv: list[str] | None = None) -> int:
    """Bad input (a StructureError, a CLIError) ends in one ``error:`` line and exit status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.command == "design":
        return design(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
