"""Collect the per-variant results of tools/image_speed_sweep.sh into one JSON and a bar chart.

    python tools/image_speed_report.py runs/speed --out docs/results/image_speed_regions

Reads every ``<variant>.json`` written by ``bench_image.py --json`` in the given folders (later
folders win on a repeated variant), and writes ``<out>.json`` and ``<out>.png`` (images/s per
variant, with the 600 images/s target drawn in).
"""

from __future__ import annotations

import argparse
import json
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
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = p.parse_args()
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
