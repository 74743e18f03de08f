"""Collect the per-variant results of tools/image_speed_sweep.sh into one JSON and a bar chart.

    python tools/image_speed_report.py runs/speed --out docs/results/image_speed_regions
    python tools/image_speed_report.py --runs runs.json --out docs/results/image_speed_ninth

Reads every ``<variant>.json`` written by ``bench_image.py --json`` in the given folders (later
folders win on a repeated variant), and writes ``<out>.json`` and ``<out>.png`` (images/s per
variant, with the 600 images/s target drawn in).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

TARGET_IMAGES_PER_S = 600.0


def collect(folders: list[Path]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"image_speed_report: {folder} is not a folder")
        for path in sorted(folder.glob("*.json")):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "images_per_s" in data:
                results[path.stem] = data
    if not results:
        raise SystemExit(f"image_speed_report: no bench_image.py results (*.json) in {folders}")
    return results


def label(name: str, result: dict) -> str:
    parts = [name]
    if result.get("fused_adaln"):
        parts.append("fused adaLN")
    if result.get("fused_gelu"):
        parts.append("fused GELU")
    if result.get("fused_mlp"):
        parts.append("cuBLASLt GELU")
    if result.get("float8", "off") != "off":
        parts.append(f"fp8 {result['float8']}")
    fused = any(result.get(k) for k in ("fused_adaln", "fused_gelu", "fused_mlp"))
    if not fused and result.get("float8", "off") == "off":
        parts.append("bf16")
    if result.get("param_dtype", "float32") != "float32":
        parts.append(f"{result['param_dtype']} params")
    if result.get("compile") == "reduce-overhead":
        parts.append("CUDA graphs")
    if result.get("cuda_graph"):
        parts.append("step graph")
    if result.get("attention") == "fa4":
        parts.append("FA4 backward")
    if result.get("fused_adaln") and result.get("deferred_biases") is False:
        parts.append("biases in GEMMs")
    if result.get("fused_mlp") and result.get("fc1_bias_grad"):
        parts.append(f"fc1 db: {result['fc1_bias_grad']}")
    if result.get("ema_overlap"):
        parts.append("late EMA")
    if result.get("attention") == "fa4" and result.get("fa4_prepost") == "fa4":
        parts.append("FA4 pre/post")
    if result.get("attention") == "fa4" and result.get("fold_qkv_bias_grad"):
        parts.append("qkv db folded")
    if result.get("fused_mlp") and result.get("cublaslt_attention_linears") is False:
        parts.append("attn Linears: torch")
    if result.get("fused_mlp") and result.get("cublaslt_adaln_linears") is False:
        parts.append("adaLN Linears: torch")
    if result.get("fused_mlp") and result.get("cublaslt_memset_penalty_us") == 0:
        parts.append("no memset penalty")
    if result.get("fused_adaln") and result.get("adaln_partial_sums") == "kernel":
        parts.append("adaLN sums: 1 kernel")
    if result.get("fused_mlp") and result.get("cublaslt_autotune") == "eager":
        parts.append("cuBLASLt tuned eager")
    if result.get("patch_embed") == "conv":
        parts.append("conv patch embed")
    return "\n".join(parts)


def plot_in_order(results: dict[str, dict], out: Path) -> None:
    """Images/s of each run in the JSON's order (one point per run, one colour per variant: the
    name's part after the first '-', without a trailing '-<repeat>'), zoomed to the runs' range:
    for repeated runs on one machine, where the spread between processes is the point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    speeds = [results[n]["images_per_s"] for n in names]

    def variant(name: str) -> str:  # "c3-p1-2" -> "p1": the call prefix and a repeat number dropped
        return re.sub(r"-\d+$", "", name.split("-", 1)[-1])

    variants = sorted({variant(n) for n in names})
    colours = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * len(names), 4.4))
    for i, (name, speed) in enumerate(zip(names, speeds)):
        ax.scatter([i], [speed], color=colours[variant(name)], label=variant(name), zorder=3)
        ax.annotate(
            f"{speed:.1f}", (i, speed), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7
        )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.axhline(TARGET_IMAGES_PER_S, color="tab:red", linestyle="--")
    ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=8, ncol=3)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("training images / s")
    ax.set_ylim(min(speeds + [TARGET_IMAGES_PER_S]) - 8, max(speeds + [TARGET_IMAGES_PER_S]) + 4)
    first = next(r for r in results.values() if "arch" in r)
    ax.set_title(
        f"{first['arch']}, batch {first['batch']}, {first['device']}; runs in order (red: 600)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output path without suffix")
    p.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="a JSON of runs in order (name -> bench_image.py result): plot each run as a point, "
        "in that order, and copy the JSON to OUT.json (in place of the folders' bar chart)",
    )
    args = p.parse_args()
    if args.runs is not None:
        results = json.loads(args.runs.read_text())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        plot_in_order(results, args.out)
        return
    if not args.folders:
        p.error("give result folders, or --runs")
    results = collect(args.folders)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(results, key=lambda n: results[n]["images_per_s"])
    speeds = [results[n]["images_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(1.6 + 1.8 * len(names), 4.4))
    bars = ax.bar([label(n, results[n]) for n in names], speeds, color="tab:blue")
    ax.bar_label(bars, labels=[f"{s:.1f}" for s in speeds])
    ax.axhline(TARGET_IMAGES_PER_S, color="tab:red", linestyle="--", label="target 600 images/s")
    first = results[names[0]]
    regions = "regional compile" if first.get("compile_regions") else "whole-model compile"
    ax.set_title(f"{first['arch']}, batch {first['batch']}, {first['device']}, {regions}", fontsize=9)
    ax.set_ylabel("training images / s")
    ax.set_ylim(0, TARGET_IMAGES_PER_S * 1.1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    print(json.dumps({n: results[n]["images_per_s"] for n in names}))


if __name__ == "__main__":
    main()
