#!/usr/bin/env bash
# A/B of two source trees on one GPU: one bench_image.py process per run, alternating A, B, A, B...
# in one call, so that both sides see the same machine (machines differ by up to 2%, and one
# drifts over minutes). Each side is a folder holding packages/reed-core/src,
# packages/reed-kernels/src and packages/reed-image/src (this checkout is "."; another commit:
# git archive REV packages | tar -x -C old). Every run's JSON must name its side's sit.py
# (bench_image.py's sit_source) and, with kernels, its side's reed-kernels (kernels_source), else
# the script fails: the ninth session's A/B calls ran the new code on both sides without noticing.
#
#     git archive HEAD~1 packages | tar -x -C /tmp/old
#     A=/tmp/old B=. RUNS=3 VARIANT=pr OUT=runs/ab REGIONS="denoiser.blocks.* aligner" \
#         bash tools/image_speed_ab.sh
#
# tools/bench_image.py and the sweep are this checkout's: the other tree's modules must take the
# options bench_image.py passes (model.kernels, reed-kernels: since the package split).
#
# Prints one line per run (side, images/s, step ms, sit.py) and each side's mean; the runs' JSONs
# are in $OUT/<side><run>/. Other variables (EXTRA, LIMIT, REGIONS, PYTHON, PROFILE) go to
# tools/image_speed_sweep.sh.
set -uo pipefail
A="${A:?A: the first source tree (a folder with packages/)}"
B="${B:?B: the second source tree}"
RUNS="${RUNS:-2}"
VARIANT="${VARIANT:-p1}"
OUT="${OUT:-runs/ab}"
PY="${PYTHON:-python}"
for side in "$A" "$B"; do
    if [ ! -f "$side/packages/reed-image/src/reed_image/models/sit.py" ]; then
        echo "image_speed_ab: $side has no packages/reed-image/src/reed_image/models/sit.py" >&2
        exit 2
    fi
done
mkdir -p "$OUT"
for run in $(seq 1 "$RUNS"); do
    for side in A B; do
        tree="${!side}"
        dir="$OUT/$side$run"
        SRC="$tree/packages/reed-core/src:$tree/packages/reed-kernels/src:$tree/packages/reed-image/src" \
            OUT="$dir" VARIANTS="$VARIANT" \
            bash tools/image_speed_sweep.sh > "$dir.log" 2>&1
    done
done
"$PY" - "$OUT" "$A" "$B" "$RUNS" "$VARIANT" <<'EOF'
import json, os, sys
out, trees, runs, variant = sys.argv[1], {"A": sys.argv[2], "B": sys.argv[3]}, int(sys.argv[4]), sys.argv[5]
speeds = {"A": [], "B": []}
for run in range(1, runs + 1):
    for side in "AB":
        path = os.path.join(out, f"{side}{run}", f"{variant}.json")
        if not os.path.exists(path):
            print(f"{side}{run}: no result ({path}; see {out}/{side}{run}.log)")
            continue
        result = json.load(open(path))
        want = os.path.realpath(os.path.join(trees[side], "packages/reed-image/src/reed_image/models/sit.py"))
        got = os.path.realpath(result.get("sit_source", "?"))  # relative to this folder, as bench wrote it
        if got != want:
            sys.exit(f"image_speed_ab: {side}{run} ran {got}, not {want}")
        if result.get("kernels_source"):
            kernels = os.path.realpath(os.path.join(trees[side], "packages/reed-kernels/src"))
            ran = os.path.realpath(result["kernels_source"])
            if not ran.startswith(kernels + os.sep):
                sys.exit(f"image_speed_ab: {side}{run} ran the kernels of {ran}, not of {kernels}")
        speeds[side].append(result["images_per_s"])
        print(f"{side}{run}: {result['images_per_s']:.1f} images/s  {result['step_ms']:.2f} ms  {got}")
for side in "AB":
    values = speeds[side]
    mean = f"{sum(values) / len(values):.1f}" if values else "-"
    print(f"{side} ({trees[side]}): mean {mean} images/s over {len(values)} runs")
EOF
