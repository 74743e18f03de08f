"""Summarise the image experiment: FD vs steps plot, table, and steps to reach vanilla's final FD.

    python tools/image_report.py --runs out/runs --variants vanilla repa reed --out out

Reads ``RUN/eval.jsonl`` (written by ``ImageTask.evaluate``) and ``RUN/metrics.jsonl`` of each
variant; writes ``results.json``, ``results.md`` and ``image_fd.png`` into ``--out``.
"Steps to reach" is the first evaluated step whose FD is at or below vanilla's final FD, and a
linear interpolation between the two evaluations that bracket it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

LABELS = {
    "vanilla": "SiT-S/2 (vanilla)",
    "repa": "+ vision target (REPA-like)",
    "reed": "REED: vision + caption + curriculum",
    "reed-nowarmup": "REED without diffusion warm-up",
}


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps_to_reach(steps: list[int], fd: list[float], threshold: float) -> tuple[int | None, float | None]:
    for i, (s, f) in enumerate(zip(steps, fd)):
        if f <= threshold:
            if i == 0:
                return s, float(s)
            s0, f0 = steps[i - 1], fd[i - 1]
            return s, s0 + (s - s0) * (f0 - threshold) / (f0 - f)
    return None, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--variants", nargs="+", default=["vanilla", "repa", "reed"])
    p.add_argument("--key", default="ema/fd")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    curves, summary = {}, {}
    for v in args.variants:
        evals = [e for e in read_jsonl(args.runs / v / "eval.jsonl") if args.key in e]
        train = [m for m in read_jsonl(args.runs / v / "metrics.jsonl") if "steps_per_s" in m]
        if not evals:
            print(f"{v}: no evaluations in {args.runs / v}")
            continue
        curves[v] = ([e["step"] for e in evals], [e[args.key] for e in evals])
        last = evals[-1]
        prefix = args.key.split("/")[0]
        summary[v] = {
            "final_step": last["step"],
            "final_fd": last[args.key],
            "best_fd": min(e[args.key] for e in evals),
            "final_precision": last.get(f"{prefix}/precision"),
            "final_recall": last.get(f"{prefix}/recall"),
            "final_is": last.get(f"{prefix}/is"),
            "mean_steps_per_s": sum(m["steps_per_s"] for m in train[1:]) / max(len(train) - 1, 1)
            if train
            else None,
            "final_loss_gen": train[-1].get("loss_gen") if train else None,
            "curve": [{"step": e["step"], "fd": e[args.key]} for e in evals],
        }
    if "vanilla" in summary:
        target = summary["vanilla"]["final_fd"]
        for v, (steps, fd) in curves.items():
            first, interp = steps_to_reach(steps, fd, target)
            summary[v]["steps_to_vanilla_final_fd"] = first
            summary[v]["steps_to_vanilla_final_fd_interp"] = interp
            if interp:
                summary[v]["speedup_vs_vanilla"] = summary["vanilla"]["final_step"] / interp
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")

    rows = [
        "| variant | final FD | best FD | precision | recall | IS-style | steps to vanilla's final FD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v, s in summary.items():
        reach = s.get("steps_to_vanilla_final_fd")
        interp = s.get("steps_to_vanilla_final_fd_interp")
        reach_txt = "not reached" if reach is None else f"{reach} (interpolated {interp:.0f})"
        rows.append(
            f"| {LABELS.get(v, v)} | {s['final_fd']:.2f} | {s['best_fd']:.2f} | "
            f"{s['final_precision']:.3f} | {s['final_recall']:.3f} | {s['final_is']:.2f} | {reach_txt} |"
        )
    (args.out / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for v, (steps, fd) in curves.items():
        ax.plot(steps, fd, marker="o", ms=3, label=LABELS.get(v, v))
    if "vanilla" in summary:
        ax.axhline(summary["vanilla"]["final_fd"], color="grey", lw=0.8, ls="--", label="vanilla final FD")
    config = args.runs / next(iter(curves)) / "config.yaml"
    batch = yaml.safe_load(config.read_text())["train"]["batch_size"] if config.exists() else "?"
    ax.set_xlabel(f"training step (batch {batch})")
    ax.set_ylabel("Frechet distance (classifier features, EMA)")
    ax.set_yscale("log")
    ax.set_title("SiT-S/2 on Fashion-MNIST 32x32")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "image_fd.png")


if __name__ == "__main__":
    main()
