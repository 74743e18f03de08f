#!/usr/bin/env bash
# Baseline vs REED (ProteinMPNN targets) on an offline split, side by side on one GPU, at each seed.
#
#   python experiments/protein/protein_prepare.py --out .carry/protein   # on a CPU machine with biotite
#   bash experiments/protein/protein_benchmark.sh .carry/protein OUT [TRAIN_SECONDS]   # repo root, GPU
#
# Needs only torch + numpy (+ pyyaml, tqdm) where it runs: structures come parsed in
# CARRY/offline.npz (DATA: another file, e.g. the --compact set) and ProteinMPNN as
# CARRY/site/proteinmpnn. SEEDS ("0"): one baseline and one REED run per seed, all at once.
# TARGETS: "stored" (ProteinMPNN features precomputed into feature stores first; fine for hundreds
# of chains) or "online" (the frozen encoder runs on each batch; for large sets, whose pair store
# would not fit a disk). Runs checkpoint into WORK and resume from there when called again with the
# same WORK (on a machine that kept it); the plan is made once per WORK.
# Writes into OUT: log.txt, plan.json, RUN_metrics.jsonl of each run (held-out recovery every few
# epochs), final_{test,validation}.json (EMA weights at each run's best validation recovery, 4
# designs per chain, with the pretrained ProteinMPNN as reference) and reed-s0_denoiser.pt (config +
# EMA weights of the last step, for `reed-protein design`).
set -euo pipefail
CARRY=${1:-.carry/protein}
OUT=${2:-runs/protein/benchmark}
TRAIN_SECONDS=${3:-360}
PY=${PYTHON:-python3}
WORK=${WORK:-${TMPDIR:-/tmp}/reed_protein_benchmark}
SEEDS=${SEEDS:-0}
TARGETS=${TARGETS:-stored}
DATA=${DATA:-$CARRY/offline.npz}
export PYTHONUNBUFFERED=1
export PYTHONPATH="packages/reed-core/src:packages/reed-protein/src:$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

say "device: $($PY -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch.__version__)')"
STORES=()
if [ "$TARGETS" = stored ]; then
  [ -d "$WORK/targets/structure" ] || $PY experiments/protein/protein_benchmark.py stores --data "$DATA" \
      --out "$WORK/targets" 2>&1 | tee -a "$LOG"
  STORES=(--stores "$WORK/targets")
fi
# shellcheck disable=SC2086  # SEEDS and PLAN_ARGS are word lists
[ -f "$WORK/configs/plan.json" ] || $PY experiments/protein/protein_benchmark.py plan --data "$DATA" \
    "${STORES[@]}" --out "$WORK/configs" --runs "$WORK/runs" --seconds "$TRAIN_SECONDS" --seeds $SEEDS \
    ${PLAN_ARGS:-} 2>&1 | tee -a "$LOG"
cp "$WORK/configs/plan.json" "$OUT/"

RUNS=()
for seed in $SEEDS; do RUNS+=("baseline-s$seed" "reed-s$seed"); done
copy_metrics() {
  for r in "${RUNS[@]}"; do
    [ -f "$WORK/runs/$r/metrics.jsonl" ] && cp "$WORK/runs/$r/metrics.jsonl" "$OUT/${r}_metrics.jsonl"
  done
  return 0
}
say "training ${RUNS[*]} side by side"
PIDS=()
for r in "${RUNS[@]}"; do
  $PY -m reed_protein.train --config "$WORK/configs/$r.yaml" >> "$WORK/$r.log" 2>&1 &
  PIDS+=($!)
done
running() { for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
( while running; do sleep 20; copy_metrics; done ) &
RC=0
for pid in "${PIDS[@]}"; do wait "$pid" || RC=$?; done
copy_metrics
for r in "${RUNS[@]}"; do say "--- $r log (tail)"; tail -n 3 "$WORK/$r.log" | tee -a "$LOG"; done
[ "$RC" = 0 ] || { say "a training run failed (rc $RC)"; exit "$RC"; }
say "training done"

CHECKPOINTS=()
for r in "${RUNS[@]}"; do  # the best validation recovery's weights where kept (train.best_metric)
  best="$WORK/runs/$r/checkpoints/best.pt"
  if [ -f "$best" ]; then CHECKPOINTS+=(--checkpoint "$r=$best"); else CHECKPOINTS+=(--checkpoint "$r=$WORK/runs/$r"); fi
done
for split in test validation; do
  $PY -m reed_protein.evaluate --data "$DATA" --split $split "${CHECKPOINTS[@]}" \
      --proteinmpnn v_48_020 --num 4 --steps 50 --temperature 0.1 \
      -o "$OUT/final_$split.json" 2>&1 | tee -a "$LOG"
done
first=${SEEDS%% *}
$PY - "$WORK/runs/reed-s$first/checkpoints/last.pt" "$OUT/reed-s${first}_denoiser.pt" <<'PYEOF'
import sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
ema = {k: v for k, v in state["ema"].items() if k.startswith("denoiser.")}
torch.save({"model": {}, "ema": ema, "config": state["config"], "step": state["step"]}, sys.argv[2])
PYEOF
say "done"
