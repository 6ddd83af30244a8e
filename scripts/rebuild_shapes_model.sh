#!/usr/bin/env bash
# Rebuilds the shipped shapes model (find_jax/envs/image/shapes/assets/shapes_model; README, "The shapes world")
# from its commands and measures it (scripts/measure_shapes.py: issue 18's (a)-(d)). Three train_shapes.py runs on
# the 10-14 px, 99%-bias world (the defaults of train_shapes.py since 2026-12-04): 3000 steps of batch 32 from
# scratch, then two warm starts of 3000 (lr 4e-4; then 2e-4 annealed to 0.05x). 9000 x 32 in all, about 100
# minutes on 2 CPU cores alone (33 min the last stage, 2026-12-04). The shipped build measured 0.942 / 0.017 /
# 0.930 / 0.297, an earlier one 0.963 / 0.025 / 0.922 / 0.273 (floats differ across CPU types; README).
#
#   nohup bash scripts/rebuild_shapes_model.sh [WORKDIR] > /dev/null 2>&1 &
#
# Every stage is a train_shapes.py run with its own workdir, so re-running this script after a stop resumes the
# stage it was in (Orbax checkpoints every 250 steps) and skips the finished ones. Logs: WORKDIR/<stage>.log;
# the model: WORKDIR/anneal/model (copy it over the shipped directory to ship it); the measurement:
# WORKDIR/anneal/measure.log. A finished stage kept elsewhere (KEPT/<stage>, that stage's model directory, e.g.
# committed by a session whose runs/ will not survive) is taken as done, and so are the stages before it: the
# chain goes on from the last kept stage.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/shapes_model}
PY=${PYTHON:-.venv/bin/python}
# Data parallel over the two CPU cores (1.09 s/step against 1.5 s/step on one device, AVX2-only EPYC, batch 32).
export FIND_JAX_CPU_DEVICES=${FIND_JAX_CPU_DEVICES:-2}
# The world, spelled out so that the recipe stays this one if train_shapes.py's defaults move again.
WORLD=(--object-sizes 10,14 --object-gap 3 --dominant-prob 0.99)
KEPT=${KEPT:-runs/kept_stages}
STAGES=(scratch warm anneal)
mkdir -p "$WORK"

# The last stage kept, and every stage before it, count as done unless WORKDIR has its run.
for ((i = ${#STAGES[@]} - 1; i >= 0; i--)); do
  kept=${STAGES[i]}
  [[ -f "$KEPT/$kept/training.json" ]] || continue
  for name in "${STAGES[@]:0:i+1}"; do
    [[ -d "$WORK/$name" ]] && continue
    mkdir -p "$WORK/$name"
    [[ $name == "$kept" ]] && cp -r "$KEPT/$kept" "$WORK/$name/model"
    touch "$WORK/$name/done"
  done
  echo "resuming after $kept (kept in $KEPT/$kept)"
  break
done

stage() {  # stage NAME [train_shapes.py flags...]: skipped once its model is exported at its last step
  local name=$1
  shift
  if [[ -f "$WORK/$name/done" ]]; then
    echo "$name: done"
    return
  fi
  echo "$name: training (log: $WORK/$name.log)"
  mkdir -p "$WORK/$name"
  "$PY" scripts/train_shapes.py --workdir "$WORK/$name" --out "$WORK/$name/model" "${WORLD[@]}" "$@" \
    >> "$WORK/$name.log" 2>&1
  touch "$WORK/$name/done"
}

stage scratch
stage warm --init-from "$WORK/scratch/model" --steps 3000 --seed 1 --lr 4e-4 --warmup-steps 100
stage anneal --init-from "$WORK/warm/model" --steps 3000 --seed 2 --lr 2e-4 --warmup-steps 100 --lr-final-fraction 0.05
"$PY" scripts/measure_shapes.py --model "$WORK/anneal/model" > "$WORK/anneal/measure.log" 2>&1
echo "measured: $WORK/anneal/measure.log"
