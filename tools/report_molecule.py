"""Summarise a baseline-vs-REED molecule comparison (eval.jsonl files of two training runs).

    python tools/report_molecule.py --baseline base/eval.jsonl --reed reed/eval.jsonl \
        --plot molecule_qm9.png --json summary.json

Compares the runs only at evaluation steps both reached (same model, data, seed and steps), and
reports the evaluation step at which each first reaches the baseline's final molecule stability.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

CURVES = ("mol_stability", "atom_stability", "validity", "uniqueness")
TABLE = (
    "atom_stability",
    "mol_stability",
    "validity",
    "connected_validity",
    "uniqueness",
    "novelty",
    "mmff_energy_median",
    "mmff_strain_median",
    "fcd",
)


def read_jsonl(path: str | Path | None) -> list[dict]:
    if path is None or not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off when the run was stopped
            continue
    return out


def by_step(records: list[dict]) -> dict[int, dict]:
    return {int(r["step"]): r for r in records if "step" in r and "mol_stability" in r}


def first_step_reaching(curve: dict[int, dict], key: str, value: float) -> int | None:
    for step in sorted(curve):
        if curve[step].get(key, -math.inf) >= value:
            return step
    return None


def throughput(records: list[dict]) -> float | None:
    rates = [r["steps_per_s"] for r in records if "steps_per_s" in r]
    return sorted(rates)[len(rates) // 2] if rates else None


def summarise(base: dict[int, dict], reed: dict[int, dict]) -> dict:
    common = sorted(set(base) & set(reed))
    if not common:
        raise SystemExit("no evaluation step reached by both runs")
    last = common[-1]
    target = base[last]["mol_stability"]
    return {
        "common_steps": common,
        "final_step": last,
        "baseline_final": base[last],
        "reed_final": reed[last],
        "baseline_final_mol_stability": target,
        "steps_to_baseline_final_mol_stability": {
            "baseline": first_step_reaching({s: base[s] for s in common}, "mol_stability", target),
            "reed": first_step_reaching({s: reed[s] for s in common}, "mol_stability", target),
        },
    }


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if abs(v) <= 1.0 else f"{v:.2f}"


def plot(base: dict[int, dict], reed: dict[int, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.4))
    for ax, key in zip(axes, CURVES):
        for name, curve, style in (("baseline", base, "o-"), ("REED (ChemNet, layer 5)", reed, "s-")):
            steps = sorted(curve)
            ax.plot(steps, [100 * curve[s].get(key, float("nan")) for s in steps], style, ms=3, label=name)
        ax.set_title(key.replace("_", " "))
        ax.set_ylim(0, 101 if key in ("uniqueness", "atom_stability", "validity") else None)
        ax.set_xlabel("training step")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("QM9, equivariant flow: baseline vs REED (EMA weights, 512 samples, 50 steps)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline", required=True)
    p.add_argument("--reed", required=True)
    p.add_argument("--baseline-train", default=None, help="metrics.jsonl (for steps/s)")
    p.add_argument("--reed-train", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    base, reed = by_step(read_jsonl(args.baseline)), by_step(read_jsonl(args.reed))
    summary = summarise(base, reed)
    summary["steps_per_s"] = {
        "baseline": throughput(read_jsonl(args.baseline_train)),
        "reed": throughput(read_jsonl(args.reed_train)),
    }
    summary["curves"] = {"baseline": base, "reed": reed}
    print(f"final common step: {summary['final_step']}")
    print("| metric | baseline | REED |\n| --- | --- | --- |")
    for key in TABLE:
        print(
            f"| {key} | {fmt(summary['baseline_final'].get(key))} | {fmt(summary['reed_final'].get(key))} |"
        )
    print(
        "steps to reach the baseline's final molecule stability "
        f"({fmt(summary['baseline_final_mol_stability'])}):",
        summary["steps_to_baseline_final_mol_stability"],
    )
    print("median steps/s:", summary["steps_per_s"])
    if args.plot:
        plot(base, reed, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
