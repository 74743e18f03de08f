#!/usr/bin/env bash
# Baseline vs REED on QM9 in one GPU session (both trainings run side by side on one GPU).
#
#   bash experiments/molecule/run_molecule_gpu.sh DATA_NPZ WHEEL_DIR OUT_DIR [TRAIN_SECONDS] [key=value ...]
#
# DATA_NPZ:  MoleculeArrays of all of QM9 (python -m reed_molecule.data.qm9 --out FILE)
# WHEEL_DIR: rdkit / fcd-torch wheels to install where they are missing ('' to skip)
# Both runs use the same preset body, seed, data order and step schedule; each is stopped after
# TRAIN_SECONDS of wall time and the comparison uses the evaluations both reached. REED builds its
# ChemNet target store first (on the GPU), so it starts a little later.
# BASE_PRESET / REED_PRESET (default qm9_budget_baseline / qm9_budget_reed; qm9_semla /
# qm9_semla_reed for SemlaFlow's network). The deadline's SIGTERM checkpoints the step each run
# reached, and a second call with the same RUNS_DIR (on a machine that kept it) resumes both.
# Then FINAL_SAMPLES (default 1000; 0: none) molecules from each run's EMA weights with
# SAMPLE_STEPS steps: OUT/RUN.sdf, the 2-D depictions of the first 48 (OUT/RUN.png) and the
# metrics (OUT/RUN_final.json).
set -euo pipefail
DATA=${1:?DATA_NPZ}
WHEELS=${2:-}
OUT=${3:?OUT_DIR}
SECONDS_TRAIN=${4:-400}
shift $(( $# >= 4 ? 4 : $# ))
EXTRA=("$@")
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -n $WHEELS ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/reed_site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/reed_site
fi
export PYTHONPATH=$ROOT/packages/reed-core/src:$ROOT/packages/reed-molecule/src${PYTHONPATH:+:$PYTHONPATH}
RUNS=${RUNS_DIR:-/tmp/reed_molecule_runs}
mkdir -p "$OUT" "$RUNS"
python3 -c "import torch, rdkit, fcd_torch, e3nn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'rdkit', rdkit.__version__)"

COMMON=(data.path="$DATA" train.steps=1000000 train.ckpt_every=1000000 train.progress_bar=false "${EXTRA[@]}")
timeout -k 60 "$SECONDS_TRAIN" python3 -m reed_molecule.train --preset "${BASE_PRESET:-qm9_budget_baseline}" \
    --run-dir "$RUNS/baseline" "${COMMON[@]}" >"$OUT/baseline.log" 2>&1 &
PID_BASE=$!
t0=$(date +%s)
python3 -m reed_molecule.targets --data "$DATA" --target chemnet --out "$RUNS/chemnet" \
    --split train --device "${DEVICE:-cuda}" --batch-size 1024 --overwrite 2>&1 | tr '\r' '\n' | tail -n 2 | tee "$OUT/targets.log"
echo "ChemNet targets took $(( $(date +%s) - t0 )) s"
timeout -k 60 "$SECONDS_TRAIN" python3 -m reed_molecule.train --preset "${REED_PRESET:-qm9_budget_reed}" \
    --run-dir "$RUNS/reed" reed.targets.chemnet.store="$RUNS/chemnet" "${COMMON[@]}" >"$OUT/reed.log" 2>&1 &
PID_REED=$!
wait $PID_BASE || echo "baseline exited with $? (124 = stopped at the time limit by SIGTERM, which checkpoints the step it reached)"
wait $PID_REED || echo "reed exited with $? (124 = stopped at the time limit by SIGTERM, which checkpoints the step it reached)"
for run in baseline reed; do
    mkdir -p "$OUT/$run"
    cp "$RUNS/$run/eval.jsonl" "$OUT/$run/" 2>/dev/null || echo "no evaluations for $run"
    cp "$RUNS/$run/metrics.jsonl" "$OUT/$run/" 2>/dev/null || true
    tail -n 3 "$OUT/$run.log"
done
python3 "$ROOT/tools/compare_runs.py" baseline="$OUT/baseline" reed="$OUT/reed" --metric mol_stability --common-x \
    --also atom_stability validity connected_validity uniqueness novelty mmff_energy_median mmff_strain_median fcd \
    --plot-also atom_stability validity uniqueness --plot "$OUT/molecule_qm9.png" --json "$OUT/summary.json"
FINAL_SAMPLES=${FINAL_SAMPLES:-1000}
if (( FINAL_SAMPLES > 0 )); then
    for run in baseline reed; do
        [[ -f $RUNS/$run/checkpoints/last.pt ]] || { echo "no checkpoint for $run: no final samples"; continue; }
        python3 -m reed_molecule.sample --run-dir "$RUNS/$run" --num "$FINAL_SAMPLES" \
            --steps "${SAMPLE_STEPS:-100}" --out "$OUT/$run.sdf" --grid "$OUT/$run.png" --device "${DEVICE:-cuda}"
        python3 -m reed_molecule.evaluate --sdf "$OUT/$run.sdf" --data "$DATA" --fcd \
            --out "$OUT/${run}_final.json" --device "${DEVICE:-cuda}"
    done
fi
