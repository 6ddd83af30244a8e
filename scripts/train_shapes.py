"""Trains the shapes-world text-to-image model (resumes when re-run with the same --workdir).

    FIND_JAX_CPU_DEVICES=2 python scripts/train_shapes.py --workdir runs/train_shapes --out runs/train_shapes/model

The defaults are the first of the shipped model's three runs: 3000 steps from scratch on the default world
(``scripts/rebuild_shapes_model.sh`` runs all three, the two warm starts with ``--init-from``; ``training.json``
in the model directory records the last run's settings and the run it started from).
``FIND_JAX_CPU_DEVICES=2`` trains data parallel over two CPU cores (any several local devices are used).
Ctrl-C or SIGTERM finishes the current step, checkpoints and exports it, and exits 130 / 143; ``--max-minutes``
stops the same way after a time budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from find_jax.envs.devices import configure_cpu_devices
from find_jax.envs.image.shapes import model as shapes_model
from find_jax.envs.image.shapes import world
from find_jax.envs.image.shapes.train import TrainConfig, train
from find_jax.interrupts import EXIT_CODES, interrupts


def main(argv: list[str] | None = None) -> None:
    configure_cpu_devices()  # $FIND_JAX_CPU_DEVICES, before JAX starts
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics.jsonl, config.json)")
    p.add_argument("--out", required=True, help="where to export the diffusers-layout model")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps")
    p.add_argument("--batch", type=int, default=d.batch, help="images per step")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of data, init and noise")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument("--lr-final-fraction", type=float, default=d.lr_final_fraction, help="final lr / peak lr")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay of the exported weights")
    p.add_argument("--init-from", default=d.init_from, help="saved model dir to warm-start from (same architecture)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics lines")
    p.add_argument(
        "--coord-channels",
        type=int,
        choices=(0, 2),
        default=d.model.coord_channels,
        help="coordinate planes appended to x_0 (the UNet's source of absolute position; 0 = none)",
    )
    p.add_argument(
        "--high-noise-fraction",
        type=float,
        default=d.high_noise_fraction,
        help="share of each batch trained at t >= --high-noise-from (where layout is decided)",
    )
    p.add_argument("--high-noise-from", type=int, default=d.high_noise_from, help="see --high-noise-fraction")
    p.add_argument("--note", default="", help="free text for training.json (e.g. what shared the cores)")
    p.add_argument("--tiny", action="store_true", help="tiny model (smoke tests)")
    p.add_argument(
        "--channels",
        default=None,
        help="UNet channels per level, comma-separated, one level per entry, cross-attention at the lowest "
        "(default: the shipped model's 64,128)",
    )
    p.add_argument(
        "--factor",
        type=int,
        default=d.model.factor,
        choices=shapes_model.FACTORS,
        help="space-to-depth factor of the pixel latent (shipped: 2, [14, 16, 16]; 1: full resolution, [5, 32, 32])",
    )
    p.add_argument("--layers-per-block", type=int, default=None, help="resnets per UNet block (shipped: 1)")
    p.add_argument(
        "--attention-levels",
        type=int,
        default=1,
        help="UNet levels with cross-attention, counted from the lowest resolution (shipped: 1, at 8x8)",
    )
    p.add_argument(
        "--object-sizes",
        default=None,
        metavar="MIN,MAX",
        help=f"bounding-box sides of the training objects, px (shipped: {d.world.min_size},{d.world.max_size})",
    )
    p.add_argument("--object-gap", type=int, default=d.world.gap, help="min px between two objects' boxes")
    p.add_argument(
        "--dominant-prob",
        type=float,
        default=d.world.dominant_prob,
        help=f"probability that a shape has its dominant colour (shipped: {d.world.dominant_prob})",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this many minutes in this call, checkpointed (re-run the same command to go on)",
    )
    a = p.parse_args(argv)
    model_cfg = shapes_model.tiny_config() if a.tiny else shapes_model.ShapesModelConfig()
    model_cfg = dataclasses.replace(model_cfg, coord_channels=a.coord_channels, factor=a.factor)
    if a.channels:
        try:
            channels = tuple(int(c) for c in a.channels.split(","))
        except ValueError:
            p.error(f"--channels must be comma-separated integers; got {a.channels!r}")
        if not channels or any(c < 32 or c % 32 for c in channels):
            p.error(
                f"--channels needs multiples of 32 (one per UNet level; diffusers' Flax GroupNorm uses 32 "
                f"groups); got {a.channels!r}"
            )
    else:
        channels = model_cfg.block_out_channels
    if a.channels or a.attention_levels != 1:
        try:
            model_cfg = shapes_model.with_levels(model_cfg, channels, a.attention_levels)
        except ValueError as e:
            p.error(f"--attention-levels: {e}")
    if a.layers_per_block is not None:
        if a.layers_per_block < 1:
            p.error(f"--layers-per-block must be >= 1; got {a.layers_per_block}")
        model_cfg = dataclasses.replace(model_cfg, layers_per_block=a.layers_per_block)
    sizes = (d.world.min_size, d.world.max_size)
    if a.object_sizes:
        try:
            sizes = tuple(int(v) for v in a.object_sizes.split(","))
        except ValueError:
            p.error(f"--object-sizes must be MIN,MAX in px; got {a.object_sizes!r}")
        if len(sizes) != 2:
            p.error(f"--object-sizes must be MIN,MAX in px; got {a.object_sizes!r}")
    geometry = world.Geometry(sizes[0], sizes[1], a.object_gap, a.dominant_prob)
    try:
        geometry.validate()
    except ValueError as e:
        p.error(f"--object-sizes / --object-gap / --dominant-prob: {e}")
    if a.max_minutes is not None and a.max_minutes <= 0:
        p.error(f"--max-minutes must be > 0; got {a.max_minutes}")
    config = dataclasses.replace(
        d,
        steps=a.steps,
        batch=a.batch,
        seed=a.seed,
        learning_rate=a.lr,
        warmup_steps=a.warmup_steps,
        lr_final_fraction=a.lr_final_fraction,
        ema_decay=a.ema_decay,
        init_from=os.path.abspath(a.init_from) if a.init_from else "",
        checkpoint_every=a.checkpoint_every,
        log_every=a.log_every,
        high_noise_fraction=a.high_noise_fraction,
        high_noise_from=a.high_noise_from,
        model=model_cfg,
        world=geometry,
    )
    max_seconds = None if a.max_minutes is None else 60.0 * a.max_minutes
    with interrupts() as stop:  # SIGINT / SIGTERM: finish the step, checkpoint and export, exit 130 / 143
        record = train(config, a.workdir, a.out, note=a.note, max_seconds=max_seconds, should_stop=stop)
    print(json.dumps({k: record[k] for k in ("steps", "final_loss", "wall_time_s")}))
    if stop():
        print(f"{stop.signal}: stopped at step {record['steps']}, checkpointed; re-run the same command to go on")
        sys.exit(EXIT_CODES[stop.signal])


if __name__ == "__main__":
    main()
