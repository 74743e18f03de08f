#!/usr/bin/env bash
# Baseline vs REED (ProteinMPNN targets) on the offline split, side by side on one GPU.
#
#   python experiments/protein/protein_prepare.py --out .carry/protein   # on a CPU machine with biotite
#   bash experiments/protein/protein_benchmark.sh .carry/protein OUT [TRAIN_SECONDS]   # repo root, GPU
#
# Needs only torch + numpy (+ pyyaml, tqdm) where it runs: structures come parsed in
# CARRY/offline.npz and ProteinMPNN as CARRY/site/proteinmpnn. Writes into OUT: log.txt,
# plan.json, {baseline,reed}_metrics.jsonl (held-out recovery every few epochs),
# final_{test,validation}.json (EMA weights, 4 designs per chain, with the pretrained ProteinMPNN
# as reference) and reed_denoiser.pt (config + EMA weights, for `reed-protein design`).
set -euo pipefail
CARRY=${1:-.carry/protein}
OUT=${2:-runs/protein/benchmark}
TRAIN_SECONDS=${3:-360}
PY=${PYTHON:-python3}
WORK=${WORK:-${TMPDIR:-/tmp}/reed_protein_benchmark}
export PYTHONUNBUFFERED=1
export PYTHONPATH="packages/reed-core/src:packages/reed-protein/src:$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$WORK"
DATA="$CARRY/offline.npz"
LOG="$OUT/log.txt"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

say "device: $($PY -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", torch.__version__)')"
$PY experiments/protein/protein_benchmark.py stores --data "$DATA" --out "$WORK/targets" 2>&1 | tee -a "$LOG"
$PY experiments/protein/protein_benchmark.py plan --data "$DATA" --stores "$WORK/targets" --out "$WORK/configs" \
    --runs "$WORK/runs" --seconds "$TRAIN_SECONDS" ${PLAN_ARGS:-} 2>&1 | tee -a "$LOG"
cp "$WORK/configs/plan.json" "$OUT/"

copy_metrics() {
  for r in baseline reed; do
    [ -f "$WORK/runs/$r/metrics.jsonl" ] && cp "$WORK/runs/$r/metrics.jsonl" "$OUT/${r}_metrics.jsonl"
  done
  return 0
}
say "training baseline and reed side by side"
$PY -m reed_protein.train --config "$WORK/configs/baseline.yaml" > "$WORK/baseline.log" 2>&1 &
PB=$!
$PY -m reed_protein.train --config "$WORK/configs/reed.yaml" > "$WORK/reed.log" 2>&1 &
PR=$!
( while kill -0 $PB 2>/dev/null || kill -0 $PR 2>/dev/null; do sleep 20; copy_metrics; done ) &
RC=0
wait $PB || RC=$?
wait $PR || RC=$?
copy_metrics
for r in baseline reed; do say "--- $r log (tail)"; tail -n 5 "$WORK/$r.log" | tee -a "$LOG"; done
[ "$RC" = 0 ] || { say "a training run failed (rc $RC)"; exit "$RC"; }
say "training done"

for split in test validation; do
  $PY -m reed_protein.evaluate --data "$DATA" --split $split \
      --checkpoint baseline="$WORK/runs/baseline" --checkpoint reed="$WORK/runs/reed" \
      --proteinmpnn v_48_020 --num 4 --steps 50 --temperature 0.1 \
      -o "$OUT/final_$split.json" 2>&1 | tee -a "$LOG"
done
$PY - "$WORK/runs/reed/checkpoints/last.pt" "$OUT/reed_denoiser.pt" <<'PYEOF'
import sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
ema = {k: v for k, v in state["ema"].items() if k.startswith("denoiser.")}
torch.save({"model": {}, "ema": ema, "config": state["config"], "step": state["step"]}, sys.argv[2])
PYEOF
say "done"
