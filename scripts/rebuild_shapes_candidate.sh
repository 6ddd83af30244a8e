#!/usr/bin/env bash
# Rebuilds the closest candidate for the next shipped shapes model (issue 18; README, "Is it a testbed that can
# tell?"): the stronger-bias, larger-objects world, 3000 steps from scratch and two warm starts (9000 x 32 in all,
# about 80 minutes on 2 CPU cores alone; measured 0.963 / 0.025 / 0.922 / 0.273 on (a)-(d)), then measures it.
#
#   nohup bash scripts/rebuild_shapes_candidate.sh [WORKDIR] > /dev/null 2>&1 &
#
# Every stage is a train_shapes.py run with its own workdir, so re-running this script after a stop resumes the
# stage it was in (Orbax checkpoints every 250 steps) and skips the finished ones. Logs: WORKDIR/<stage>.log;
# the candidate: WORKDIR/b99w2/model; the measurement: WORKDIR/b99w2/measure.log. A finished stage kept in the
# repository (CANDIDATES/<stage>, that stage's model directory; runs/ does not survive a fresh checkout) is taken
# as done, and so are the stages before it: the chain goes on from the last kept stage.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/candidate}
PY=${PYTHON:-.venv/bin/python}
# Data parallel over the two CPU cores (1.09 s/step against 1.5 s/step on one device, AVX2-only EPYC, batch 32).
export FIND_JAX_CPU_DEVICES=${FIND_JAX_CPU_DEVICES:-2}
WORLD=(--object-sizes 10,14 --object-gap 3 --dominant-prob 0.99)
CANDIDATES=${CANDIDATES:-find_jax/envs/image/shapes/assets/candidate}
STAGES=(b99 b99w b99w2)
mkdir -p "$WORK"

# The last stage kept in the repository, and every stage before it, count as done unless WORKDIR has its run.
for ((i = ${#STAGES[@]} - 1; i >= 0; i--)); do
  kept=${STAGES[i]}
  [[ -f "$CANDIDATES/$kept/training.json" ]] || continue
  for name in "${STAGES[@]:0:i+1}"; do
    [[ -d "$WORK/$name" ]] && continue
    mkdir -p "$WORK/$name"
    [[ $name == "$kept" ]] && cp -r "$CANDIDATES/$kept" "$WORK/$name/model"
    touch "$WORK/$name/done"
  done
  echo "resuming after $kept (kept in $CANDIDATES/$kept)"
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

stage b99
stage b99w --init-from "$WORK/b99/model" --steps 3000 --seed 1 --lr 4e-4 --warmup-steps 100
stage b99w2 --init-from "$WORK/b99w/model" --steps 3000 --seed 2 --lr 2e-4 --warmup-steps 100 --lr-final-fraction 0.05
"$PY" scripts/measure_shapes.py --model "$WORK/b99w2/model" > "$WORK/b99w2/measure.log" 2>&1
echo "measured: $WORK/b99w2/measure.log"
