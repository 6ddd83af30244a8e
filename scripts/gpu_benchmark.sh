#!/usr/bin/env bash
# SD1.5-sized sampler figures (512x512, 50 DDIM steps, CFG 7.5, random weights) on a GPU machine that has no
# network, for README "Benchmarks". Two steps:
#
#   bash scripts/gpu_benchmark.sh fetch            # here, with PyPI: pure-Python wheels into .whl/ (git-ignored)
#   bash scripts/gpu_benchmark.sh run DTYPE [OUT]  # there: DTYPE bfloat16 or float32; tables and JSON into OUT
#   bash scripts/gpu_benchmark.sh video DTYPE [OUT]  # there: the ModelScope-sized video case (below)
#   bash scripts/gpu_benchmark.sh shapes [OUT]       # there: train a larger shapes model, measure (a)-(d)
#
# `video`: ali-vilab/text-to-video-ms-1.7b-sized random weights (UNet3D = find_jax's UNet3DConfig defaults at
# 32x32 latents, SD's VAE, a 1024-wide 23-layer CLIP text encoder; built by torch's initialisers and converted,
# never a Flax init), 16 frames at 256x256, 50 DDIM steps, CFG 9: the video environment vs diffusers'
# TextToVideoSDPipeline + DDIMScheduler, seconds per video and peak GPU memory at batch 1 and 4. The model is
# built once into .gpu_model_video_modelscope/ (git-ignored). FIND_JAX_GPU_BATCHES (default 1,4) runs fewer
# batches per call, should one call not hold both; FIND_JAX_GPU_QUERY_CHUNK (default 0: off) sets the JAX
# UNet3D's spatial attention chunk (queries per chunk). Not yet run on a GPU: its duration is unmeasured.
#
# The GPU image this project is lent has JAX, flax, optax, orbax, torch and safetensors, but transformers 5
# (no Flax models), huggingface_hub 1.x and tokenizers 0.23 (both refused by transformers 4.57) and no
# diffusers; `run` installs the fetched wheels into a private folder ahead of those on PYTHONPATH and runs the
# project from the checkout (no pip install of the project: with no network, pip could not resolve its
# dependencies there, and the checkout on PYTHONPATH is all it needs). The SD1.5-sized model is built once
# into .gpu_model_sd15/ (git-ignored) and reused by the next `run` on the same machine, so `run bfloat16` then
# `run float32` build it only once. Each `run` (JAX and PyTorch, batch 1 and 8, 2 timed calls each) is meant
# to fit one 10-minute device call: an estimate, not yet measured.
# That image's Python 3.12 / jax 0.11 stack was never run here, but its nearest CPU twin was: the test suite and
# `FIND_JAX_GPU_CONFIG=tiny ... run bfloat16` pass under scripts/newer_stack_check.sh (Python 3.13, jax 0.11.2).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${FIND_JAX_GPU_WHEELS:-.whl}  # where `fetch` writes and `run` reads the wheels
SITE=${FIND_JAX_GPU_SITE:-/tmp/find-jax-site}  # where `run` installs them (a folder it made, or empty)
PY=${PYTHON:-python3}
CONFIG=${FIND_JAX_GPU_CONFIG:-sd15}  # "tiny" for a quick dry run of this script on a CPU machine (both cases)

install_site() {  # the fetched wheels into $SITE, once; then $SITE and the checkout on PYTHONPATH
  ls "$WHEELS"/diffusers-*.whl "$WHEELS"/transformers-*.whl >/dev/null || {
    echo "no wheels in $WHEELS: run 'bash scripts/gpu_benchmark.sh fetch' on a machine with PyPI first" >&2
    exit 2
  }
  if [ ! -f "$SITE/.complete" ]; then
    # Start over only in a folder this script made (marker) or an empty one: never delete anything else.
    if [ -d "$SITE" ] && [ ! -f "$SITE/.find-jax-site" ] && [ -n "$(ls -A "$SITE")" ]; then
      echo "$SITE holds files this script did not write; set FIND_JAX_GPU_SITE to an empty or new folder" >&2
      exit 2
    fi
    rm -rf "$SITE"
    mkdir -p "$SITE"
    touch "$SITE/.find-jax-site"
    "$PY" -m pip install -q --no-deps --no-index --target "$SITE" "$WHEELS"/*.whl
    touch "$SITE/.complete"
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$1/gpu.txt" || true
  "$PY" -c "import jax, torch, diffusers, transformers, flax; print('jax', jax.__version__, jax.devices(), \
'| torch', torch.__version__, torch.cuda.is_available(), '| diffusers', diffusers.__version__, \
'| transformers', transformers.__version__, '| flax', flax.__version__)" | tee -a "$1/gpu.txt"
}

case "${1:-}" in
  fetch)
    mkdir -p "$WHEELS"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --abi cp312 --abi abi3 --abi none --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d "$WHEELS" \
      "diffusers==0.39.0" "transformers==4.57.6" "huggingface_hub>=0.34,<1.0" "tokenizers>=0.22,<0.23"
    ls -l "$WHEELS"
    ;;
  run)
    dtype=${2:?usage: gpu_benchmark.sh run bfloat16|float32 [OUT]}
    out=${3:-${OUT:-.}}
    case "$dtype" in bfloat16 | float32) ;; *) echo "DTYPE must be bfloat16 or float32, got $dtype" >&2; exit 2 ;; esac
    mkdir -p "$out"
    install_site "$out"
    "$PY" scripts/benchmark_sampler.py --config "$CONFIG" --model-out ".gpu_model_$CONFIG" --dtype "$dtype" \
      --jax-cpu-devices 1 --torch-threads 1 --batches 1,8 --repeats 2 --json "$out/${CONFIG}_$dtype.json" \
      | tee "$out/${CONFIG}_$dtype.md"
    ;;
  video)
    dtype=${2:?usage: gpu_benchmark.sh video bfloat16|float32 [OUT]}
    out=${3:-${OUT:-.}}
    case "$dtype" in bfloat16 | float32) ;; *) echo "DTYPE must be bfloat16 or float32, got $dtype" >&2; exit 2 ;; esac
    vconfig=modelscope
    [ "$CONFIG" = tiny ] && vconfig=tiny
    mkdir -p "$out"
    install_site "$out"
    "$PY" scripts/benchmark_sampler.py --kind video --config "$vconfig" --model-out ".gpu_model_video_$vconfig" \
      --dtype "$dtype" --frames 16 --steps 50 --guidance 9 --jax-cpu-devices 1 --torch-threads 1 \
      --batches "${FIND_JAX_GPU_BATCHES:-1,4}" --query-chunk "${FIND_JAX_GPU_QUERY_CHUNK:-0}" --repeats 2 \
      --json "$out/video_${vconfig}_$dtype.json" | tee "$out/video_${vconfig}_$dtype.md"
    ;;
  shapes)
    # Issue 18: train the shapes model where the compute is (checkpointed; re-run to go on while the machine
    # is warm), then measure (a)-(d) and the positive controls. FIND_JAX_GPU_SHAPES_MINUTES (default 7) bounds
    # the training part of one call; the exported model, training.json and the measurements come back in OUT.
    # FIND_JAX_GPU_SHAPES_ARGS replaces the training flags below (e.g. "--factor 1 --channels 64,128,256 ...").
    out=${2:-${OUT:-.}}
    mkdir -p "$out"
    install_site "$out"
    # Larger, better separated objects (better on (a)-(c) at equal steps, README 2026-12-02) and the stronger
    # colour bias (best (a), (b), (d) at 3000 x 32 on the CPU, README 2026-12-03).
    args=(--steps 20000 --batch 256 --lr 5e-4 --warmup-steps 500 --channels 128,256 --layers-per-block 2
      --object-sizes 10,14 --object-gap 3 --dominant-prob 0.99 --checkpoint-every 1000 --log-every 100)
    [ "$CONFIG" = tiny ] && args=(--steps 4 --batch 4 --checkpoint-every 2 --log-every 1 --tiny
      --object-sizes 10,14 --object-gap 3 --dominant-prob 0.99)
    [ -n "${FIND_JAX_GPU_SHAPES_ARGS:-}" ] && read -r -a args <<< "$FIND_JAX_GPU_SHAPES_ARGS"
    "$PY" scripts/train_shapes.py --workdir .gpu_train_shapes --out "$out/shapes_model" "${args[@]}" \
      --max-minutes "${FIND_JAX_GPU_SHAPES_MINUTES:-7}" --note "gpu_benchmark.sh shapes" | tee "$out/train.txt"
    cp .gpu_train_shapes/metrics.jsonl "$out/" || true
    n=64
    [ "$CONFIG" = tiny ] && n=2
    "$PY" scripts/measure_shapes.py --model "$out/shapes_model" --n "$n" --json "$out/measure.json" \
      | tee "$out/measure.txt"
    ;;
  *)
    echo "usage: bash scripts/gpu_benchmark.sh fetch | run bfloat16|float32 [OUT] | video bfloat16|float32 [OUT]" \
      "| shapes [OUT]" >&2
    exit 2
    ;;
esac
