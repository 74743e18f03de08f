"""Plot held-out recovery vs epochs for baseline and REED from a protein_benchmark.sh output folder.

    python tools/protein_plot.py OUT --png docs/results/protein.png

Prints a JSON summary: best held-out recovery of each run and the epoch it was reached, the first
epoch at which REED reached the baseline's best, the final evaluation (EMA weights, 4 designs per
chain) and the pretrained ProteinMPNN reference on the same chains.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(path: Path, split: str, key: str = "recovery") -> tuple[list[float], list[float]]:
    epochs, values = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        k = f"eval/raw/{split}/{key}"
        if k in rec:
            epochs.append(rec["eval/epoch"])
            values.append(rec[k])
    return epochs, values


def first_reaching(epochs: list[float], values: list[float], level: float) -> float | None:
    for e, v in zip(epochs, values):
        if v >= level:
            return e
    return None


def summarise(out: Path) -> dict:
    summary: dict = {"plan": json.loads((out / "plan.json").read_text())}
    for split in ("test", "validation"):
        runs = {r: curve(out / f"{r}_metrics.jsonl", split) for r in ("baseline", "reed")}
        s: dict = {}
        for r, (e, v) in runs.items():
            if v:
                i = max(range(len(v)), key=v.__getitem__)
                s[r] = {"best": v[i], "best_epoch": e[i], "last": v[-1], "last_epoch": e[-1]}
        if "baseline" in s and "reed" in s:
            e_base = s["baseline"]["best_epoch"]
            e_reed = first_reaching(*runs["reed"], s["baseline"]["best"])
            s["reed_epochs_to_baseline_best"] = e_reed
            s["speedup_to_baseline_best"] = (e_base / e_reed) if e_reed else None
        final = out / f"final_{split}.json"
        if final.exists():
            f = json.loads(final.read_text())
            s["final"] = {m: {k: v for k, v in r.items() if k != "per_chain"} for m, r in f["models"].items()}
            s["chains"], s["residues"] = f["chains"], f["residues"]
        summary[split] = s
    return summary


def plot(out: Path, png: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = {"baseline": "tab:gray", "reed": "tab:red"}
    labels = {"baseline": "baseline (diffusion only)", "reed": "REED (ProteinMPNN targets)"}
    for ax, split in zip(axes, ("test", "validation")):
        for r in ("baseline", "reed"):
            e, v = curve(out / f"{r}_metrics.jsonl", split)
            ax.plot(e, [100 * x for x in v], color=colors[r], label=labels[r], lw=1.6)
        ref = summary[split].get("final", {}).get("proteinmpnn")
        if ref:
            ax.axhline(
                100 * ref["recovery"],
                color="tab:blue",
                ls="--",
                lw=1.2,
                label="pretrained ProteinMPNN v_48_020",
            )
        base = summary[split].get("baseline")
        if base:
            ax.axhline(100 * base["best"], color="tab:gray", ls=":", lw=1)
        n = summary[split].get("chains")
        ax.set_title(f"held-out {split} ({n} chains)" if n else split)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("sequence recovery (%)")
    axes[0].legend(loc="lower right", fontsize=8)
    plan = summary["plan"]
    fig.suptitle(
        f"Inverse folding on the offline split, {plan['epochs']} epochs, {plan['device']}", fontsize=10
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--png", type=Path, default=Path("docs/results/protein.png"))
    args = parser.parse_args()
    summary = summarise(args.out)
    plot(args.out, args.png, summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
