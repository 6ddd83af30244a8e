"""Trains the shapes-world text-to-image model (resumes when re-run with the same --workdir).

    python scripts/train_shapes.py --workdir /work/train_shapes_run --steps 4000 --batch 32 \
        --out find_jax/assets/shapes_model

``FIND_JAX_CPU_DEVICES=2`` trains data parallel over two CPU cores (any several local devices are used).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from find_jax.sampler import configure_cpu_devices
from find_jax.shapes import model as shapes_model
from find_jax.shapes.train import TrainConfig, train


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
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics lines")
    p.add_argument("--tiny", action="store_true", help="tiny model (smoke tests)")
    a = p.parse_args(argv)
    model_cfg = shapes_model.tiny_config() if a.tiny else shapes_model.ShapesModelConfig()
    config = dataclasses.replace(
        d,
        steps=a.steps,
        batch=a.batch,
        seed=a.seed,
        learning_rate=a.lr,
        checkpoint_every=a.checkpoint_every,
        log_every=a.log_every,
        model=model_cfg,
    )
    record = train(config, a.workdir, a.out)
    print(json.dumps({k: record[k] for k in ("steps", "final_loss", "wall_time_s")}))


if __name__ == "__main__":
    main()
