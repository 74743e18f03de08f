"""Compare the loss curves of reed-core runs (e.g. 1 GPU vs 2-GPU DDP with the same global batch).

    python tools/compare_runs.py RUN_A RUN_B [--labels "1 GPU" "2 GPUs DDP"] [--plot out.png]

Prints, per run, the final logged loss and evaluation metrics, and the largest gap between the
curves after smoothing over ``--window`` log records; writes a PNG of both curves with ``--plot``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reed_core.train import read_metrics


def curve(run: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    records = [m for m in read_metrics(run) if key in m]
    return np.array([m["step"] for m in records]), np.array([m[key] for m in records])


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    return np.convolve(y, np.ones(window) / window, mode="valid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+", default=None)
    parser.add_argument("--key", default="loss")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    curves = [curve(r, args.key) for r in args.runs]
    summary = {}
    for label, run, (steps, y) in zip(labels, args.runs, curves):
        evals = {k: v for m in read_metrics(run) for k, v in m.items() if k.startswith("eval/")}
        summary[label] = {"final_step": int(steps[-1]), f"final_{args.key}": float(y[-1]), **evals}
        print(f"{label:>16s}: step {steps[-1]}, {args.key} {y[-1]:.4f}, {evals}")
    (s0, y0), (s1, y1) = curves[0], curves[1]
    if len(s0) == len(s1) and (s0 == s1).all():
        gap = np.abs(smooth(y0, args.window) - smooth(y1, args.window))
        rel = gap / np.abs(smooth(y0, args.window))
        summary["max_abs_gap_smoothed"] = float(gap.max())
        summary["max_rel_gap_smoothed"] = float(rel.max())
        summary["mean_rel_gap_smoothed"] = float(rel.mean())
        print(
            f"smoothed ({args.window} records) gap: max {gap.max():.4f} abs, "
            f"max {100 * rel.max():.2f}% / mean {100 * rel.mean():.2f}% relative"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label, (steps, y) in zip(labels, curves):
            ax.plot(steps, y, label=label, alpha=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel(args.key)
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
